"""The counter-based Gumbel-max draw of ``fixable.noise``, computed in place and in row
chunks: the same tokens, bit for bit, at a fraction of the cost on a large vocabulary.

``fixable.noise.gumbel_argmax`` writes about twenty full (rows, vocab) int64/float64
temporaries per decoding step; on a CPU the allocations, not the arithmetic, dominate
(a 49 k-token vocabulary at 32 rows spent ~130 ms a step there, more than a 135 M-parameter
model's forward). Here every step of the same splitmix64 hash, the same ``-log(-log u)``
and the same float64 sum run in place in a few preallocated buffers, a block of rows at a
time so that the buffers stay in cache.

Bit-identity with ``fixable.noise`` (tests check it): every operation is the same
elementwise kernel on the same values; the one subtlety is that ATen computes the last
``n mod 16`` float64 elements of a contiguous buffer with the scalar ``log`` rather than
the vectorised one, which may differ by an ulp, so row blocks are sized to hold a multiple
of 16 elements and only the final block ends where the whole buffer would have ended.
"""

from __future__ import annotations

import math

import torch

from fixable.noise import _MUL1, _MUL2, GOLDEN, _as_int64, _signed, splitmix64

PRUNE_MIN_VOCAB = 4096  # below it the full computation is as cheap
PRUNE_MARGIN = 0.01  # nats: bounds the float32 estimate's error on a token's score (~1e-4)
BLOCK_ELEMENTS = 1 << 17  # elements per row block (1 MiB per int64 buffer)
_TAIL = 16  # ATen's vectorised float64 loop handles 2 × 8 lanes; the rest goes scalar
_VOCAB_CACHE: dict[tuple[int, str], torch.Tensor] = {}


def _vocab_golden(vocab_size: int, device) -> torch.Tensor:
    """``(v + 1) * GOLDEN`` for every index v, wrapped to int64 (remembered per size)."""
    key = (vocab_size, str(device))
    cached = _VOCAB_CACHE.get(key)
    if cached is None:
        cached = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=device)
        cached.mul_(_signed(GOLDEN))
        if len(_VOCAB_CACHE) > 8:
            _VOCAB_CACHE.clear()
        _VOCAB_CACHE[key] = cached
    return cached


def _rows_per_block(vocab_size: int) -> int:
    step = _TAIL // math.gcd(vocab_size, _TAIL)  # rows whose element count is a multiple of 16
    rows = max(1, BLOCK_ELEMENTS // vocab_size)
    return max(step, rows - rows % step)


def _shr_(z: torch.Tensor, bits: int, out: torch.Tensor) -> torch.Tensor:
    torch.bitwise_right_shift(z, bits, out=out)
    return out.bitwise_and_((1 << (64 - bits)) - 1)


def _hash_block(keys, vocab, z, tmp) -> torch.Tensor:
    """The top 53 bits of ``splitmix64(key + (v + 1) * GOLDEN)`` for a block of rows, in ``z``."""
    torch.add(keys[:, None], vocab[None, :], out=z)
    # splitmix64, in place: z += GOLDEN; z = (z ^ z>>>30) * M1; (z ^ z>>>27) * M2; z ^ z>>>31
    z.add_(_signed(GOLDEN))
    z.bitwise_xor_(_shr_(z, 30, tmp)).mul_(_signed(_MUL1))
    z.bitwise_xor_(_shr_(z, 27, tmp)).mul_(_signed(_MUL2))
    z.bitwise_xor_(_shr_(z, 31, tmp))
    torch.bitwise_right_shift(z, 11, out=tmp)
    z.copy_(tmp.bitwise_and_((1 << 53) - 1))
    return z


def _exact_scores_(top53: torch.Tensor, logprobs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``logprobs + gumbel`` in float64 exactly as ``fixable.noise`` computes it, into ``out``."""
    out.copy_(top53)
    out.add_(0.5).mul_(2.0**-53)  # u in (0, 1]
    out.log_().neg_().log_().neg_()  # -log(-log u)
    return out.add_(logprobs)


def gumbel_argmax(logprobs: torch.Tensor, seeds, step) -> torch.Tensor:
    """Exactly ``fixable.noise.gumbel_argmax(logprobs, seeds, step)``, faster.

    On a large vocabulary (a multiple of 16 of at least ``PRUNE_MIN_VOCAB`` tokens) the
    float64 logarithms, the bulk of the cost, are taken only for the tokens that can win:
    a float32 estimate of every score, within ``PRUNE_MARGIN`` of the exact one, keeps the
    tokens within twice that of the best estimate, and the exact scores decide among them.
    The winner is always kept (its estimate is at most one margin below its score, which is
    at least the best-estimated token's score, at least one margin below the best
    estimate); a row whose estimates are not all comparable (NaN) is computed in full.
    """
    rows, vocab_size = logprobs.shape
    device = logprobs.device
    if device.type != "cpu":  # one fused launch per op is already cheap on a GPU
        from fixable.noise import gumbel_argmax as reference

        return reference(logprobs, seeds, step)
    seeds = _as_int64(seeds, device)
    steps = torch.as_tensor(step, dtype=torch.int64, device=device).expand(seeds.shape)
    keys = splitmix64(seeds + (steps + 1) * _signed(GOLDEN))
    vocab = _vocab_golden(vocab_size, device)
    block = min(rows, _rows_per_block(vocab_size))
    z = torch.empty((block, vocab_size), dtype=torch.int64, device=device)
    tmp = torch.empty_like(z)
    prune = vocab_size % _TAIL == 0 and vocab_size >= PRUNE_MIN_VOCAB
    dtype = torch.float32 if prune else torch.float64
    score = torch.empty((block, vocab_size), dtype=dtype, device=device)
    aux = torch.empty_like(score) if prune else None
    near_one = torch.empty_like(score) if prune else None
    chosen = torch.empty(rows, dtype=torch.int64, device=device)
    for start in range(0, rows, block):
        n = min(block, rows - start)
        top53 = _hash_block(keys[start : start + n], vocab, z[:n], tmp[:n])
        lp = logprobs[start : start + n]
        if not prune:
            _exact_scores_(top53, lp, score[:n])
            torch.argmax(score[:n], dim=-1, out=chosen[start : start + n])
        else:
            chosen[start : start + n] = _pruned_argmax(
                top53, lp, score[:n], aux[:n], near_one[:n], tmp[:n]
            )
    return chosen


def _estimate_(top53, lp, estimate, aux, near_one, scratch) -> torch.Tensor:
    """A float32 ``logprobs + gumbel`` within ~1e-5 (relative) of the exact score, but for
    ``u == 1`` (rows with it are computed in full). ``w = -log u`` comes from ``u`` itself
    where ``u < 1/2`` and from ``1 - u`` (exact, in integers) where ``u >= 1/2``, so that
    float32 never rounds ``u`` to 1. The two are merged by multiplying with a 0/1 mask
    (exact on finite values, and several times faster than ``torch.where`` on a CPU)."""
    estimate.copy_(top53).add_(0.5).mul_(2.0**-53).log_().neg_()  # finite: w <= 37.5
    # from 2**52 on, float64 rounds x + 1/2 to the even one of x, x + 1: u = r / 2**53 with
    # r = x + (x & 1), so (1 - u) * 2**53 = 2**53 - r exactly, in integers
    torch.bitwise_and(top53, 1, out=scratch)
    scratch.add_(top53).neg_().add_(1 << 53)
    aux.copy_(scratch).mul_(-(2.0**-53)).log1p_().neg_().clamp_(max=64.0)
    near_one.copy_(torch.bitwise_right_shift(top53, 52, out=scratch))  # 1 where u >= 1/2
    aux.mul_(near_one)
    estimate.mul_(near_one.neg_().add_(1.0)).add_(aux)
    return estimate.log_().neg_().add_(lp)


def _pruned_argmax(top53, lp, estimate, aux, near_one, scratch) -> torch.Tensor:
    n, vocab_size = top53.shape
    _estimate_(top53, lp, estimate, aux, near_one, scratch)
    best = estimate.max(dim=-1, keepdim=True).values
    keep = estimate >= best - 2 * PRUNE_MARGIN
    row, col = keep.nonzero(as_tuple=True)  # row-major: columns ascending within a row
    count = row.numel()
    padded = -(-count // _TAIL) * _TAIL  # a multiple of 16 keeps every log on the vector path
    exact = torch.full((padded,), 0.5, dtype=torch.float64)
    bits = torch.full((padded,), 1 << 52, dtype=torch.int64)
    bits[:count] = top53[row, col]
    _exact_scores_(bits, torch.nn.functional.pad(lp[row, col].double(), (0, padded - count)), exact)
    exact = exact[:count]
    row_best = torch.full((n,), float("-inf"), dtype=torch.float64)
    row_best.scatter_reduce_(0, row, exact, reduce="amax")
    winner = exact == row_best[row]
    first = torch.full((n,), vocab_size, dtype=torch.int64)
    first.scatter_reduce_(0, row[winner], col[winner], reduce="amin")
    # a NaN anywhere (an impossible token meeting infinite noise) or a row without a winner:
    # the full computation, as the reference would do it
    bad = torch.isnan(best[:, 0]) | (first == vocab_size) | (top53 == (1 << 53) - 1).any(-1)
    if bool(bad.any()):
        sub = bad.nonzero()[:, 0]
        full = torch.empty((sub.numel(), vocab_size), dtype=torch.float64)
        _exact_scores_(top53[sub], lp[sub], full)
        first[sub] = torch.argmax(full, dim=-1)
    return first
