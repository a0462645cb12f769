"""fastnoise draws exactly the tokens fixable.noise draws: the same seeds, steps and
log-probs give the same argmax on the pruned path (large vocabularies), the full in-place
path (small or odd vocabularies), sharp and flat distributions, masked tokens and the rare
noise values near u = 1 that float32 cannot tell from 1."""

from __future__ import annotations

import pytest
import torch

from fixable import fastnoise, noise


@pytest.mark.parametrize(
    ("rows", "vocab"), [(1, 5), (7, 37), (33, 1001), (17, 4096), (32, 8192), (3, 49152)]
)
@pytest.mark.parametrize("scale", [0.3, 3.0, 30.0])
def test_same_tokens_as_reference(rows, vocab, scale):
    gen = torch.Generator().manual_seed(rows * 1000 + vocab)
    logprobs = torch.log_softmax(torch.randn(rows, vocab, generator=gen) * scale, dim=-1)
    if vocab > 7:
        logprobs[:, ::7] = float("-inf")  # DoLa and top-p style masks
    seeds = torch.randint(-(2**62), 2**62, (rows,), generator=gen)
    for step in (0, 1, 9, 250):
        expected = noise.gumbel_argmax(logprobs, seeds, step)
        assert torch.equal(fastnoise.gumbel_argmax(logprobs, seeds, step), expected)


def test_near_ties_and_per_row_steps():
    # two tokens a hair apart in every row: the exact float64 scores must decide
    vocab = 4096
    logprobs = torch.full((64, vocab), -30.0)
    logprobs[:, 100] = -0.6931
    logprobs[:, 4000] = -0.6931 + 1e-6
    logprobs = torch.log_softmax(logprobs, dim=-1)
    seeds = list(range(64))
    steps = torch.arange(64)
    assert torch.equal(
        fastnoise.gumbel_argmax(logprobs, seeds, steps), noise.gumbel_argmax(logprobs, seeds, steps)
    )


def test_estimate_is_close_where_u_is_near_one_or_zero():
    # the float32 estimate stays within the pruning margin of the exact score over the
    # whole range of u, including values float32 would round to 1 and the smallest u
    top53 = torch.tensor(
        [[0, 1, 2**20, 2**52 - 1, 2**52, 2**53 - 2**30, 2**53 - 5, 2**53 - 2] + [7] * 8]
    )
    logprobs = torch.full(top53.shape, -3.0)
    exact = torch.empty(top53.shape, dtype=torch.float64)
    fastnoise._exact_scores_(top53, logprobs, exact)
    buffers = [torch.empty(top53.shape) for _ in range(3)]
    estimate = fastnoise._estimate_(top53, logprobs, *buffers, torch.empty_like(top53))
    assert torch.isfinite(exact).all()
    assert (estimate.double() - exact).abs().max() < fastnoise.PRUNE_MARGIN / 10
