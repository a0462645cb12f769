"""Where the organism engine's decoding time goes, and what other attention kernels would cost.

About half of a decoding step of a zoo model is attention over the KV cache: for every row
and head, a 1 x 16 query against 16 x S cached keys, then 1 x S weights against S x 16
values (``fixable.organism.decode._forward`` writes them as two batched matmuls over the
transposed key cache, because the fused kernel is not batch-invariant). This script times
that step against alternatives on the same tensors, in the same run, and prints each as a
ratio of CPU time against the engine's (below 1.0 = the alternative is faster):

- ``elementwise``: broadcast multiply and sum instead of the matmuls;
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` (the fused kernel the
  engine does not use: its summation order depends on the batch and the thread split);
- ``merged_heads``: one matmul per row over all heads (keys interleaved by head; 4x the
  arithmetic, a quarter of the batched entries), keeping the diagonal blocks;
- ``bf16``: the same two matmuls on a bf16 cache;
- ``prefix_shared``: rows that continue the same prompt share its keys (one matmul per
  prompt for the prompt part, per row for the generated part), the layout a rescue sweep
  allows (R rows per failure).

Each shape is (rows, prompt length, generated length); 4 heads of 16 (the zoo's width).

    python benchmarks/bench_attention.py            # one thread, the engine's setting
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

H, D = 4, 16
SHAPES = ((64, 30, 10), (512, 30, 10), (512, 30, 30), (512, 30, 90), (256, 30, 170))
PER_PROMPT = 16  # rows per prompt for prefix_shared (the demo's R)


def cpu_ms(fn, repeats: int) -> float:
    fn()
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - start) / repeats * 1e3


def kernels(B: int, P: int, T: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    S, M = P + T, P + T + 16  # cache slots: filled, allocated
    q = torch.randn(B, H, 1, D, generator=g)
    k = torch.randn(B, H, D, M, generator=g)  # the engine's transposed key cache
    v = torch.randn(B, H, M, D, generator=g)
    bias = torch.zeros(B, 1, 1, S)
    kS, vS = k[..., :S], v[:, :, :S]

    def engine():
        return torch.matmul(torch.softmax(torch.matmul(q, kS) + bias, -1), vS)

    def elementwise():
        s = (q.transpose(-1, -2) * kS).sum(-2, keepdim=True) + bias
        return (torch.softmax(s, -1).transpose(-1, -2) * vS).sum(-2, keepdim=True)

    k_rows = kS.transpose(-1, -2).contiguous()

    def sdpa():
        return F.scaled_dot_product_attention(q, k_rows, vS, attn_mask=bias, scale=1.0)

    k2 = kS.permute(0, 2, 3, 1).reshape(B, D, S * H).contiguous()  # slot-major, head-minor
    v2 = vS.permute(0, 2, 1, 3).reshape(B, S * H, D).contiguous()
    q2 = q[:, :, 0]

    def merged_heads():
        s = torch.diagonal(torch.matmul(q2, k2).view(B, H, S, H), dim1=1, dim2=3)
        p = torch.softmax(s.transpose(1, 2) + bias[:, 0], -1)
        big = torch.zeros(B, H, S, H)
        torch.diagonal(big, dim1=1, dim2=3).copy_(p.transpose(1, 2))
        return torch.matmul(big.view(B, H, S * H), v2)

    qb, kb, vb = q.bfloat16(), kS.bfloat16(), vS.bfloat16()

    def bf16():
        p = torch.softmax(torch.matmul(qb, kb).float() + bias, -1).bfloat16()
        return torch.matmul(p, vb)

    U = max(1, B // PER_PROMPT)
    n = B // U
    kp, vp = k[:U, :, :, :P].contiguous(), v[:U, :, :P].contiguous()
    kg, vg = k[..., P:S], v[:, :, P:S]

    def prefix_shared():
        qg = q[: U * n].view(U, n, H, D).transpose(1, 2)  # (U, H, n, D)
        sp = torch.matmul(qg, kp).transpose(1, 2).reshape(U * n, H, 1, P)
        s = torch.cat((sp, torch.matmul(q[: U * n], kg[: U * n])), -1) + bias[: U * n]
        p = torch.softmax(s, -1)
        pp = p[..., :P].reshape(U, n, H, P).transpose(1, 2)
        yp = torch.matmul(pp, vp).transpose(1, 2).reshape(U * n, H, 1, D)
        return yp + torch.matmul(p[..., P:], vg[: U * n])

    return {
        "engine": engine,
        "elementwise": elementwise,
        "sdpa": sdpa,
        "merged_heads": merged_heads,
        "bf16": bf16,
        "prefix_shared": prefix_shared,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = list(kernels(8, 4, 4))
    print(
        f"attention step, CPU ms of the engine and ratio of each alternative ({args.threads} thread)"
    )
    print(
        f"{'rows':>5} {'prompt':>6} {'gen':>4} {'engine ms':>10} "
        + " ".join(f"{n:>13}" for n in names[1:])
    )
    for B, P, T in SHAPES:
        fns = kernels(B, P, T)
        ref = fns["engine"]()
        for name in ("elementwise", "merged_heads"):  # same arithmetic, other order
            assert torch.allclose(fns[name]().reshape(ref.shape), ref, atol=1e-4), name
        times = {name: cpu_ms(fn, args.repeats) for name, fn in fns.items()}
        ratios = " ".join(f"{times[n] / times['engine']:>12.2f}x" for n in names[1:])
        print(f"{B:>5} {P:>6} {T:>4} {times['engine']:>10.3f} {ratios}")


if __name__ == "__main__":
    main()
