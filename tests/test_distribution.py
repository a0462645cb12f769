"""``fixable.distribution.sampling_logprobs``, the one function both the organism engine and
the hf backend sample from, against the formulas written out by hand on small inputs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixable.distribution import DOLA_PLAUSIBILITY, sampling_logprobs
from fixable.interventions import SamplingSpec


def logprobs(*probs) -> torch.Tensor:
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p / p.sum(-1, keepdim=True))


POLICY = logprobs([0.5, 0.3, 0.16, 0.04], [0.05, 0.05, 0.1, 0.8])
REFERENCE = logprobs([0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.25, 0.25])
EARLY = logprobs([0.7, 0.1, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7])


def test_retry_is_the_policy_itself_bit_for_bit():
    assert sampling_logprobs(POLICY, SamplingSpec()) is POLICY


def test_temperature():
    got = sampling_logprobs(POLICY, SamplingSpec(temperature=0.5)).exp()
    p = POLICY.exp()
    want = p**2 / (p**2).sum(-1, keepdim=True)
    assert torch.allclose(got, want)


def test_mixture_is_geometric_and_renormalised():
    got = sampling_logprobs(POLICY, SamplingSpec(alpha=0.25), ref_lp=REFERENCE).exp()
    p, r = POLICY.exp(), REFERENCE.exp()
    unnormalised = p**0.75 * r**0.25
    assert torch.allclose(got, unnormalised / unnormalised.sum(-1, keepdim=True))
    # temperature applies to the mixture
    hot = sampling_logprobs(POLICY, SamplingSpec(alpha=0.25, temperature=2.0), ref_lp=REFERENCE)
    tempered = unnormalised**0.5
    assert torch.allclose(hot.exp(), tempered / tempered.sum(-1, keepdim=True))


def test_dola_contrasts_within_the_plausible_set():
    got = sampling_logprobs(POLICY, SamplingSpec(dola_layer=1), early_lp=EARLY).exp()
    p, q = POLICY.exp(), EARLY.exp()
    plausible = p >= DOLA_PLAUSIBILITY * p.max(-1, keepdim=True).values
    ratio = torch.where(plausible, p / q, torch.zeros_like(p))
    want = ratio / ratio.sum(-1, keepdim=True)
    assert torch.allclose(got, want)
    # below 0.1 x the top token's probability is never drawn: 0.04 < 0.05, 0.05 < 0.08
    assert got[0, 3] == 0 and got[0, :3].min() > 0
    assert got[1, :2].sum() == 0 and got[1, 2:].min() > 0


@pytest.mark.parametrize("spec", [SamplingSpec(), SamplingSpec(temperature=1.7)])
def test_rows_are_distributions(spec):
    got = sampling_logprobs(POLICY, spec)
    assert torch.allclose(got.exp().sum(-1), torch.ones(2, dtype=torch.float64))


def test_top_p_keeps_the_smallest_prefix_holding_p():
    # row 0 sorted: 0.5, 0.3, 0.16, 0.04 -> p=0.7 keeps 0.5 and 0.3 (0.5 < 0.7 <= 0.8)
    got = sampling_logprobs(POLICY, SamplingSpec(top_p=0.7)).exp()
    assert torch.allclose(got[0], torch.tensor([0.5, 0.3, 0, 0], dtype=torch.float64) / 0.8)
    # row 1 (0.8 on the last token): the top token alone already holds 0.7
    assert torch.allclose(got[1], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))
    # the mass exactly reached keeps the prefix that reaches it, nothing more
    exact = sampling_logprobs(POLICY, SamplingSpec(top_p=0.8 - 1e-12)).exp()
    assert (exact[0] > 0).tolist() == [True, True, False, False]


def test_min_p_keeps_tokens_above_a_share_of_the_top():
    got = sampling_logprobs(POLICY, SamplingSpec(min_p=0.5)).exp()
    # row 0: 0.5 and 0.3 (>= 0.25) stay; row 1: only 0.8 (0.1 < 0.4)
    assert torch.allclose(got[0], torch.tensor([0.5, 0.3, 0, 0], dtype=torch.float64) / 0.8)
    assert torch.allclose(got[1], torch.tensor([0, 0, 0, 1.0], dtype=torch.float64))


def test_truncation_applies_after_temperature():
    hot = SamplingSpec(temperature=2.0, top_p=0.7)
    got = sampling_logprobs(POLICY, hot).exp()
    tempered = sampling_logprobs(POLICY, SamplingSpec(temperature=2.0)).exp()
    # row 0 tempered: ~0.38, 0.30, 0.22, 0.11 -> 0.7 needs the first three
    keep = torch.tensor([True, True, True, False])
    assert torch.allclose(got[0], torch.where(keep, tempered[0], 0) / tempered[0][keep].sum())


def test_neutral_truncation_is_no_truncation():
    assert sampling_logprobs(POLICY, SamplingSpec(top_p=1.0, min_p=0.0)) is POLICY


@given(
    st.lists(st.floats(-30, 5), min_size=1, max_size=40),
    st.floats(1e-6, 1.0, exclude_max=True),
    st.floats(0.0, 1.0, exclude_max=True),
    st.floats(0.05, 2.0),
)
@settings(max_examples=200, deadline=None)
def test_truncation_leaves_a_distribution_with_the_top_token(logits, top_p, min_p, temperature):
    lp = torch.log_softmax(torch.tensor([logits], dtype=torch.float32), dim=-1)
    spec = SamplingSpec(temperature=temperature, top_p=top_p, min_p=min_p)
    got = sampling_logprobs(lp, spec)
    assert torch.isfinite(got[0, int(torch.argmax(lp))])
    assert abs(float(got.exp().sum()) - 1.0) < 1e-4
    # what stays is the most probable tokens: nothing kept is less probable than a dropped one
    kept = torch.isfinite(got[0])
    if not kept.all():
        assert lp[0][kept].min() >= lp[0][~kept].max()
    # a larger p keeps every token a smaller one keeps
    tight = sampling_logprobs(lp, SamplingSpec(temperature=temperature, top_p=top_p))
    loose = sampling_logprobs(
        lp, SamplingSpec(temperature=temperature, top_p=min(1.0, top_p + 0.1))
    )
    assert not (torch.isfinite(tight) & ~torch.isfinite(loose)).any()
