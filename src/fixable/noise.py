"""Counter-based sampling noise: the randomness of a token is a pure function of its address.

A rollout's tokens must depend only on its seed (``fixable.types.rollout_seed``), never on
the batch it was sampled in, its order, a resume or the worker. Stateful generators
(``torch.Generator``) cannot give that: the numbers a row draws depend on how many were
drawn before it. Here the uniform behind token ``t`` of row seed ``s`` at vocabulary index
``v`` is hashed from ``(s, t, v)`` with splitmix64:

    key(s, t)   = splitmix64(s + GOLDEN * (t + 1))      # the t-th output of s's stream
    bits(s,t,v) = splitmix64(key(s, t) + GOLDEN * (v + 1))
    u           = (top 53 bits of bits + 0.5) / 2**53   # in (0, 1), never 0 or 1
    gumbel      = -log(-log(u))

and a token is sampled with the Gumbel-max trick, ``argmax(log p / T + gumbel)``, which
draws exactly from ``softmax(log p / T)``. Everything is vectorised in torch int64; the
arithmetic wraps modulo 2**64 like unsigned integers, and logical right shifts are
emulated by masking the sign bits an arithmetic shift copies in. The same function serves
every backend (organism, hf), so the same log-probs give the same tokens on each.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15  # splitmix64's increment (2**64 / golden ratio)
_MUL1 = 0xBF58476D1CE4E5B9
_MUL2 = 0x94D049BB133111EB


def _signed(x: int) -> int:
    """The int64 whose bits are the unsigned 64-bit ``x``."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def splitmix64_int(x: int) -> int:
    """Reference splitmix64 finaliser on Python ints (unsigned 64-bit); tests check the
    vectorised version against it."""
    z = (x + GOLDEN) & _MASK64
    z = ((z ^ (z >> 30)) * _MUL1) & _MASK64
    z = ((z ^ (z >> 27)) * _MUL2) & _MASK64
    return z ^ (z >> 31)


def _shr(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical (unsigned) right shift of int64 bits: an arithmetic shift, then clear the
    ``bits`` high bits it filled with copies of the sign."""
    return (z >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(x: torch.Tensor) -> torch.Tensor:
    """Vectorised splitmix64 on int64 tensors holding unsigned 64-bit values (wrapping)."""
    z = x + _signed(GOLDEN)
    z = (z ^ _shr(z, 30)) * _signed(_MUL1)
    z = (z ^ _shr(z, 27)) * _signed(_MUL2)
    return z ^ _shr(z, 31)


def _as_int64(values, device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        return values.to(device=device, dtype=torch.int64)
    return torch.tensor([_signed(int(v)) for v in values], dtype=torch.int64, device=device)


def uniforms(seeds, step, vocab_size: int, *, device=None) -> torch.Tensor:
    """(rows, vocab_size) float64 uniforms in (0, 1) for row seeds ``seeds`` at decoding
    step ``step`` (an int, or one step per row)."""
    seeds = _as_int64(seeds, device)
    step = torch.as_tensor(step, dtype=torch.int64, device=seeds.device).expand(seeds.shape)
    key = splitmix64(seeds + (step + 1) * _signed(GOLDEN))
    vocab = torch.arange(1, vocab_size + 1, dtype=torch.int64, device=seeds.device)
    bits = splitmix64(key[:, None] + vocab[None, :] * _signed(GOLDEN))
    return (_shr(bits, 11).to(torch.float64) + 0.5) * 2.0**-53


def gumbel(seeds, step, vocab_size: int, *, device=None) -> torch.Tensor:
    """(rows, vocab_size) float64 standard Gumbel noise, a pure function of (seed, step, index)."""
    return -torch.log(-torch.log(uniforms(seeds, step, vocab_size, device=device)))


def gumbel_argmax(logprobs: torch.Tensor, seeds, step) -> torch.Tensor:
    """Sample one token per row from ``softmax(logprobs)`` with counter-based Gumbel noise.

    ``logprobs`` (rows, vocab) are the log-probs of the distribution to sample from
    (temperature, mixing or contrast already applied); ``-inf`` entries are never drawn.
    The sum is taken in float64 so that the noise adds no rounding of its own.
    """
    noise = gumbel(seeds, step, logprobs.shape[-1], device=logprobs.device)
    return torch.argmax(logprobs.to(torch.float64) + noise, dim=-1)
