"""The next-token distribution an intervention samples from, computed in one place.

``sampling_logprobs`` turns the policy's T=1 log-probs (and, where the intervention needs
them, the reference model's or an early exit's) into the log-probs of the distribution a
``SamplingSpec`` samples from. The organism engine (``fixable.organism.decode``) and the
``hf`` backend both call it, which is why the two draw the same tokens from the same
weights and seeds: the arithmetic is the same operations in the same order.

The steps, in order:

1. the base distribution: the policy; or the geometric mixture with the reference,
   ``log_softmax((1-alpha) log p + alpha log p_ref)``; or DoLa, ``log p - log p_early``
   over the tokens with ``p >= DOLA_PLAUSIBILITY * max p`` (everything else can never be
   drawn);
2. temperature: ``log_softmax(base / T)`` (skipped at T = 1, so retry is the policy's own
   log-probs bit for bit);
3. truncation, as vLLM orders it: nucleus (``top_p``) keeps the most probable tokens
   until they hold mass >= p (the token that crosses p included, so the top token always
   stays), then ``min_p`` keeps the tokens with probability >= min_p x the top token's;
   what is left is renormalised. Each step is skipped at its neutral value (top_p = 1,
   min_p = 0).
"""

from __future__ import annotations

import math

import torch

from fixable.interventions import SamplingSpec

DOLA_PLAUSIBILITY = 0.1  # DoLa keeps tokens with final-layer prob >= 0.1 x the top prob


def sampling_logprobs(
    policy_lp: torch.Tensor,
    spec: SamplingSpec,
    ref_lp: torch.Tensor | None = None,
    early_lp: torch.Tensor | None = None,
) -> torch.Tensor:
    """Log-probs (rows × vocabulary) of the distribution ``spec`` samples from.

    Args:
        policy_lp: the policy's T=1 log-probs, ``log_softmax`` of its logits.
        spec: the sampling specification; ``alpha`` is applied when ``ref_lp`` is given,
            DoLa when ``early_lp`` is given (the caller steps those models).
        ref_lp: the reference model's T=1 log-probs, for ``spec.alpha``.
        early_lp: the early exit's log-probs (``log_softmax`` of the head applied after
            ``spec.dola_layer`` blocks), for DoLa.
    """
    base = policy_lp
    if ref_lp is not None:
        base = torch.log_softmax((1 - spec.alpha) * policy_lp + spec.alpha * ref_lp, dim=-1)
    elif early_lp is not None:
        threshold = policy_lp.max(dim=-1, keepdim=True).values + math.log(DOLA_PLAUSIBILITY)
        contrast = (policy_lp - early_lp).masked_fill(policy_lp < threshold, float("-inf"))
        base = torch.log_softmax(contrast, dim=-1)
    if spec.temperature != 1:
        base = torch.log_softmax(base / spec.temperature, dim=-1)
    if spec.top_p < 1:
        dropped = _outside_nucleus(base, spec.top_p)
        base = torch.log_softmax(base.masked_fill(dropped, -math.inf), dim=-1)
    if spec.min_p > 0:
        threshold = base.max(dim=-1, keepdim=True).values + math.log(spec.min_p)
        base = torch.log_softmax(base.masked_fill(base < threshold, -math.inf), dim=-1)
    return base


def _outside_nucleus(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """True for the tokens top-p sampling drops: those whose more probable tokens (ties
    broken by token id) already hold mass >= top_p. The top token has none before it, so
    it always stays."""
    sorted_lp, order = torch.sort(logp, dim=-1, descending=True, stable=True)
    probs = sorted_lp.exp()
    before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above
    return torch.zeros_like(logp, dtype=torch.bool).scatter(-1, order, before >= top_p)
