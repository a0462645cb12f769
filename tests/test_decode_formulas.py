"""Every sampling formula of the organism engine at T = 1 and T != 1, against an oracle.

For plain sampling, geometric mixing and DoLa, at temperatures 1, 0.5 and 1.7, the
decoded tokens are re-scored by a full forward pass without a cache and the three
reported per-token figures are recomputed from the definitions in ``Decoded``:

- ``logprobs``: log-prob under the distribution actually sampled from, i.e. the
  intervention's *normalised* distribution, tempered and renormalised;
- ``entropies``: entropy of the policy's own T = 1 distribution (never the sampled one);
- ``policy_logprobs``: log p_policy(token) at T = 1.

At T = 1 nothing renormalises the mixture after the fact, so an unnormalised mixture
shows there; at T != 1 the sampled distribution differs from the policy's, so an entropy
of the sampled distribution shows there. The oracle normalises with ``logsumexp`` in
float64, a different path from the engine's ``log_softmax``.
"""

from __future__ import annotations

import math

import pytest
import torch

from fixable.organism.decode import decode
from fixable.organism.model import ModelConfig, OrganismLM

TEMPERATURES = (1.0, 0.5, 1.7)
ATOL = 2e-4


def _model(seed: int, n_layer: int = 2, scale: float = 3.0) -> OrganismLM:
    torch.manual_seed(seed)
    model = OrganismLM(ModelConfig(family="llama", n_layer=n_layer, n_head=4, n_embd=32))
    with torch.no_grad():  # sharper than the init's near-uniform distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model.eval()


PROMPTS = [[1, 5, 9, 12], [1, 40, 41, 7, 7, 30], [1, 22]]
SEEDS = [11, 12, 13]


@pytest.fixture(scope="module")
def models():
    return _model(1, n_layer=3), _model(2, n_layer=3)


def _normalise(logits: torch.Tensor) -> torch.Tensor:
    logits = logits.double()
    return logits - torch.logsumexp(logits, dim=-1, keepdim=True)


def _rescore(model, prompt, tokens, layer=None):
    """(final, early) T = 1 log-probs at every generated position, from a full forward."""
    with torch.no_grad():
        idx = torch.tensor([prompt + tokens])
        logits, hidden = model(idx, output_hidden=True)
    span = slice(len(prompt) - 1, len(prompt) - 1 + len(tokens))
    final = _normalise(logits[0, span])
    early = None if layer is None else _normalise(model.head(hidden[layer])[0, span])
    return final, early


def _oracle(formula, policy, ref, early, alpha, temperature):
    """Log-probs of the distribution sampled from (float64)."""
    if formula == "plain":
        base = policy
    elif formula == "mix":
        base = _normalise((1 - alpha) * policy + alpha * ref)
    else:  # dola: contrast over {v : p(v) >= 0.1 max p}
        plausible = policy >= policy.max(-1, keepdim=True).values + math.log(0.1)
        base = _normalise((policy - early).masked_fill(~plausible, float("-inf")))
    return _normalise(base / temperature)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("formula", ["plain", "mix", "dola"])
def test_reported_figures_follow_their_definitions(models, formula, temperature):
    model, reference = models
    kwargs = {"temperature": temperature, "max_new_tokens": 12, "eos_id": 99}
    alpha, layer = 0.3, 1
    if formula == "mix":
        kwargs |= {"reference": reference, "alpha": alpha}
    elif formula == "dola":
        kwargs |= {"dola_layer": layer}
    result = decode(model, PROMPTS, SEEDS, **kwargs)
    for i, prompt in enumerate(PROMPTS):
        tokens = result.token_ids[i]
        assert len(tokens) == 12
        picked = torch.tensor(tokens)[:, None]
        policy, early = _rescore(model, prompt, tokens, layer if formula == "dola" else None)
        ref = _rescore(reference, prompt, tokens)[0] if formula == "mix" else None
        sampled = _oracle(formula, policy, ref, early, alpha, temperature)
        # the sampled distribution is a distribution, and every drawn token is in its support
        assert torch.allclose(sampled.exp().sum(-1), torch.ones(len(tokens), dtype=torch.float64))
        expected_logp = sampled.gather(1, picked)[:, 0]
        assert torch.isfinite(expected_logp).all()
        got = torch.tensor(result.logprobs[i], dtype=torch.float64)
        assert torch.allclose(got, expected_logp, atol=ATOL), (formula, temperature, i)

        policy_entropy = -(policy.exp() * policy).sum(-1)
        got_entropy = torch.tensor(result.entropies[i], dtype=torch.float64)
        assert torch.allclose(got_entropy, policy_entropy, atol=ATOL), (formula, temperature)

        got_policy = torch.tensor(result.policy_logprobs[i], dtype=torch.float64)
        assert torch.allclose(got_policy, policy.gather(1, picked)[:, 0], atol=ATOL)


@pytest.mark.parametrize("formula", ["mix", "dola"])
def test_the_sampled_distribution_differs_from_the_policy_at_t1(models, formula):
    """The cases above are not vacuous: at T = 1 the intervention's log-probs are not the
    policy's, and its entropy would not be the policy's entropy."""
    model, reference = models
    kwargs = {"reference": reference, "alpha": 0.3} if formula == "mix" else {"dola_layer": 1}
    result = decode(model, PROMPTS, SEEDS, max_new_tokens=12, eos_id=99, **kwargs)
    got = torch.tensor(result.logprobs[0], dtype=torch.float64)
    policy = torch.tensor(result.policy_logprobs[0], dtype=torch.float64)
    assert (got - policy).abs().max() > 10 * ATOL


def test_tempered_sampling_reports_the_policy_entropy_not_the_tempered_one(models):
    model, _ = models
    result = decode(model, PROMPTS[:1], SEEDS[:1], temperature=0.5, max_new_tokens=12, eos_id=99)
    tokens = result.token_ids[0]
    policy, _ = _rescore(model, PROMPTS[0], tokens)
    tempered = _normalise(policy / 0.5)
    tempered_entropy = -(tempered.exp() * tempered).sum(-1)
    policy_entropy = -(policy.exp() * policy).sum(-1)
    got = torch.tensor(result.entropies[0], dtype=torch.float64)
    assert (tempered_entropy - policy_entropy).abs().min() > 10 * ATOL  # they do differ
    assert torch.allclose(got, policy_entropy, atol=ATOL)


@pytest.mark.parametrize("formula", ["plain", "mix", "dola"])
def test_greedy_takes_the_argmax_of_the_intervened_distribution(models, formula):
    model, reference = models
    alpha, layer = 0.3, 1
    kwargs = {"greedy": True, "max_new_tokens": 10, "eos_id": 99}
    if formula == "mix":
        kwargs |= {"reference": reference, "alpha": alpha}
    elif formula == "dola":
        kwargs |= {"dola_layer": layer}
    result = decode(model, PROMPTS, SEEDS, **kwargs)
    for i, prompt in enumerate(PROMPTS):
        tokens = result.token_ids[i]
        policy, early = _rescore(model, prompt, tokens, layer if formula == "dola" else None)
        ref = _rescore(reference, prompt, tokens)[0] if formula == "mix" else None
        base = _oracle(formula, policy, ref, early, alpha, 1.0)
        assert base.argmax(-1).tolist() == tokens
        assert result.logprobs[i] == [0.0] * len(tokens)  # a point mass
        policy_entropy = -(policy.exp() * policy).sum(-1)
        got_entropy = torch.tensor(result.entropies[i], dtype=torch.float64)
        assert torch.allclose(got_entropy, policy_entropy, atol=ATOL)
