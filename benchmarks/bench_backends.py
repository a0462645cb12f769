"""Speed of the real-model backends, as ratios against baselines measured in the same run.

1. ``hf`` backend's decoding loop vs transformers ``generate`` on the same weights and
   settings (T=1 ancestral sampling, no top-k/top-p, same batch, same number of new
   tokens). The loop also returns per-token log-probs, full-vocabulary entropies and the
   policy log-probs; ``generate`` returns tokens only. Target: <= 1.2x the time.
2. The ``openai`` backend through ``fixable serve`` vs calling the served backend
   directly (the organism backend when it is installed, else the hf backend): the
   overhead of HTTP, JSON and the teacher-forced pass for top-k log-probs.

The model is a Llama-style organism (random init, sharpened so that its entropies look
like a trained model's) exported to Hugging Face format in a temporary directory; nothing
is downloaded. ``--quick`` shrinks everything to a smoke run. Run with ``nice``:

    nice -n 10 python benchmarks/bench_backends.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_model(root: Path, n_layer: int, n_embd: int, seed: int = 0) -> tuple[Path, Path]:
    """An organism llama checkpoint and its Hugging Face export."""
    import torch

    from fixable.organism.export_hf import export_llama
    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    torch.manual_seed(seed)
    cfg = ModelConfig(family="llama", n_layer=n_layer, n_head=4, n_embd=n_embd, block_size=256)
    model = OrganismLM(cfg)
    with torch.no_grad():
        model.embed_tokens.weight.mul_(6.0)
    checkpoint = save_checkpoint(model, root / "organism")
    export_llama(checkpoint, root / "hf")
    return checkpoint, root / "hf"


CPU_RATIOS: dict[str, float] = {}  # name -> ratio of process CPU time, beside the wall ratio


def timed_pair(first, second, repeats: int, name: str = "") -> tuple[float, float]:
    """Median wall times of two functions run alternately (after one warm-up each), so that
    load from other processes falls on both alike. The ratio of their median process CPU
    times (all threads of this process, the in-process server's included) is kept in
    ``CPU_RATIOS[name]``: on a shared machine it is steadier than wall time."""
    first()
    second()
    wall: tuple[list[float], list[float]] = ([], [])
    cpu: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - start)
            cpu[k].append(time.process_time() - start_cpu)
    if name:
        CPU_RATIOS[name] = statistics.median(cpu[0]) / statistics.median(cpu[1])
    return statistics.median(wall[0]), statistics.median(wall[1])


def bench_hf_vs_generate(
    hf_dir: Path, *, rows: int, new_tokens: int, repeats: int, device: str
) -> dict:
    import torch

    from fixable.backends.base import GenerationRequest
    from fixable.backends.hf import HFBackend
    from fixable.interventions import RETRY

    backend = HFBackend(hf_dir, batch_size=rows, device=device)
    prompts = [f"{1000 + 37 * i:04d}|a27 s13 m32 x01|" for i in range(rows)]
    requests = [GenerationRequest(p, seed=i, max_tokens=new_tokens) for i, p in enumerate(prompts)]
    # no eos: both loops then run exactly new_tokens steps for every row
    backend.eos_ids = frozenset()

    def ours():
        backend.generate(requests, RETRY)

    model, tok = backend.policy.lm, backend.tokenizer
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True).to(backend.device)

    def theirs():
        with torch.inference_mode():
            model.generate(
                **batch,
                do_sample=True,
                temperature=1.0,
                top_k=None,
                top_p=None,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=tok.pad_token_id,
            )

    t_ours, t_theirs = timed_pair(ours, theirs, repeats, name=f"hf-{rows}")
    out = {
        "ours_s": t_ours,
        "generate_s": t_theirs,
        "ratio": t_ours / t_theirs,
        "tokens": rows * new_tokens,
    }
    if backend.device != "cpu":  # the same seeds on the CPU: how often do tokens agree?
        cpu = HFBackend(hf_dir, batch_size=rows, device="cpu")
        cpu.eos_ids = frozenset()
        pairs = list(
            zip(backend.generate(requests, RETRY), cpu.generate(requests, RETRY), strict=True)
        )
        same = [(a, b) for a, b in pairs if a.token_ids == b.token_ids]
        out["same_as_cpu"] = f"{len(same)}/{len(pairs)}"
        out["max_logprob_diff"] = max(
            (
                abs(x - y)
                for a, b in same
                for x, y in zip(a.policy_logprobs, b.policy_logprobs, strict=True)
            ),
            default=float("nan"),
        )
    return out


def bench_serve_overhead(
    checkpoint: Path,
    hf_dir: Path,
    *,
    prompts: int,
    samples: int,
    new_tokens: int,
    repeats: int,
    concurrency: int,
) -> dict:
    from fixable.backends.base import GenerationRequest
    from fixable.backends.openai import OpenAIBackend
    from fixable.interventions import RETRY
    from fixable.registry import backends
    from fixable.serve import BackgroundServer, ServedModel, token_level

    if "organism" in backends:
        direct = backends.create("organism", str(checkpoint), reference=None)
        which = "organism"
    else:
        direct = backends.create("hf", str(hf_dir))
        which = "hf (organism backend not installed)"
    requests = [
        GenerationRequest(
            f"{1000 + 37 * i:04d}|a27 s13 m32 x01|", seed=i * 100 + j, max_tokens=new_tokens
        )
        for i in range(prompts)
        for j in range(samples)
    ]

    def call_direct():
        direct.generate(requests, RETRY)

    out = {"served": which, "rollouts": len(requests)}
    served = [ServedModel("policy", direct, token_level(direct))]
    with BackgroundServer(served, batch_window_ms=20) as url:
        for top in (0, 5):
            client = OpenAIBackend(
                "policy",
                base_url=url,
                concurrency=concurrency,
                top_logprobs=top,
                timeout_s=600,
                max_retries=0,
            )

            def call_served(client=client):
                gens = client.generate(requests, RETRY)
                failed = [g.error for g in gens if g.finish_reason == "error"]
                if failed:
                    raise RuntimeError(f"{len(failed)} requests failed: {failed[0]}")

            direct_s, served_s = timed_pair(call_served, call_direct, repeats, name=f"serve-{top}")[
                ::-1
            ]
            client.close()
            out[f"direct_top{top}_s"], out[f"served_top{top}_s"] = direct_s, served_s
            out[f"ratio_top{top}"] = served_s / direct_s
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (hf part only)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--layers", type=int, default=None, help="model depth (default 4)")
    parser.add_argument("--width", type=int, default=None, help="model width (default 128)")
    parser.add_argument("--rows", default=None, help="batch sizes, e.g. 1,16,64")
    parser.add_argument("--tokens", type=int, default=None, help="new tokens (default 96)")
    parser.add_argument("--skip-serve", action="store_true", help="only the hf part")
    parser.add_argument("--skip-hf", action="store_true", help="only the serve part")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    q = args.quick
    sizes = dict(n_layer=args.layers or (2 if q else 4), n_embd=args.width or (64 if q else 128))
    rows_list = [int(r) for r in args.rows.split(",")] if args.rows else ([8] if q else [1, 16, 64])
    new_tokens = args.tokens or (16 if q else 96)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
        f"model: llama organism {sizes}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint, hf_dir = build_model(Path(tmp), **sizes)
        for rows in [] if args.skip_hf else rows_list:
            r = bench_hf_vs_generate(
                hf_dir,
                rows=rows,
                new_tokens=new_tokens,
                repeats=1 if q else 3,
                device=args.device,
            )
            print(
                f"[hf loop vs generate] {rows:3d} rows x {r['tokens'] // rows} tokens: "
                f"ours {r['ours_s']:.3f}s (with log-probs + entropies), generate "
                f"{r['generate_s']:.3f}s -> ratio {r['ratio']:.2f}x (target <= 1.2x); "
                f"CPU-time ratio {CPU_RATIOS[f'hf-{rows}']:.2f}x"
            )
            if "same_as_cpu" in r:
                print(
                    f"    same seeds on {args.device} and cpu: identical tokens in "
                    f"{r['same_as_cpu']} rows; max |d log-prob| on those "
                    f"{r['max_logprob_diff']:.1e}"
                )
        if args.skip_serve:
            return 0
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            print("[openai via fixable serve] skipped: fastapi/uvicorn not installed")
            return 0
        r = bench_serve_overhead(
            checkpoint,
            hf_dir,
            prompts=4 if q else 16,
            samples=2 if q else 8,
            new_tokens=16 if q else 64,
            repeats=1 if q else 3,
            concurrency=64,
        )
        print(
            f"[openai via fixable serve vs direct {r['served']}] {r['rollouts']} rollouts, "
            f"64 in flight: "
            f"logprobs only: served {r['served_top0_s']:.3f}s vs direct {r['direct_top0_s']:.3f}s "
            f"-> {r['ratio_top0']:.2f}x; top-5 log-probs: served {r['served_top5_s']:.3f}s vs "
            f"direct {r['direct_top5_s']:.3f}s -> {r['ratio_top5']:.2f}x; CPU-time ratios "
            f"{CPU_RATIOS['serve-0']:.2f}x and {CPU_RATIOS['serve-5']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
