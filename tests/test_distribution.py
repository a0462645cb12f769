"""``fixable.distribution.sampling_logprobs``, the one function both the organism engine and
the hf backend sample from, against the formulas written out by hand on small inputs."""

from __future__ import annotations

import pytest
import torch

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
