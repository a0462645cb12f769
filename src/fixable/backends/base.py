"""The backend interface: what every engine (organism, hf, vllm, openai) provides.

A backend samples completions for many prompts at once under one intervention and reports,
for every generated token, its log-prob under the sampling distribution and the entropy
of the policy's next-token distribution. Backends that can also score given completions
teacher-forced (needed for the reference-drift feature) say so with the ``score``
capability. Capabilities are checked before any sampling starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, runtime_checkable

from fixable.errors import CapabilityError
from fixable.interventions import Intervention, distribution_kinds

# Capability flags. An intervention kind is a capability of the same name.
RETRY, TEMPERATURE, MIX, CHECKPOINT, DOLA = "retry", "temperature", "mix", "checkpoint", "dola"
TOP_P, MIN_P = "top_p", "min_p"
SCORE = "score"  # teacher-forced log-probs of given completions under the policy or reference
FULL_ENTROPY = "full_entropy"  # entropies over the whole vocabulary (else a flagged top-k estimate)
SEEDED = "seeded"  # a rollout's tokens are a pure function of its seed (batch-invariant)


class DistributionCapabilities:
    """The ``capabilities`` of a backend that computes its sampling distribution with
    ``fixable.distribution.sampling_logprobs`` from a whole ``SamplingSpec``: every
    intervention kind declared ``distribution_only`` (read from ``interventions.KINDS``
    when asked, so a new such kind needs no backend code), plus the flags given here for
    what takes the backend's own machinery (``mix``, ``checkpoint``, ``dola``) and its other
    promises (``score``, ``seeded``…).

        capabilities = DistributionCapabilities(MIX, CHECKPOINT, DOLA, SCORE)

    Read on the class (``fixable list backends``) or on an instance; an instance that
    narrows its set (no reference model: no ``mix``) assigns its own frozenset.
    """

    def __init__(self, *flags: str):
        self.flags = frozenset(flags)

    def __get__(self, instance: object, owner: type | None = None) -> frozenset[str]:
        return distribution_kinds() | self.flags


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str  # the text to continue
    seed: int  # rollout_seed(...) of this rollout: the only randomness its tokens may use
    max_tokens: int = 160
    stop: tuple[str, ...] = ()  # strings that end the completion (besides end-of-sequence)


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    logprobs: list[float]  # per token, under the distribution actually sampled from
    entropies: list[float]  # per token, entropy of the policy's own next-token distribution (T=1)
    policy_logprobs: list[float] | None = None  # per token, log p_policy(y_t) at T=1
    entropy_kind: str = "full"  # "full" or "topk" (an estimate with a tail bucket)
    finish_reason: str = "stop"  # "stop", "length" or "error"
    error: str = ""  # why, when finish_reason == "error" (the request failed for good)
    time_s: float = 0.0
    meta: dict = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """An engine that samples and scores. Implementations register in ``fixable.registry.backends``."""

    name: ClassVar[str]
    capabilities: ClassVar[frozenset[str]]

    @property
    def model_name(self) -> str:
        """A stable identity of the policy (zoo name, path or served model id)."""
        ...

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        """One Generation per request, in order, sampled under ``intervention``."""
        ...

    def score(
        self, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, which: str = "policy"
    ) -> list[list[float]]:
        """Teacher-forced log-probs of each completion's tokens under ``which`` model
        (``"policy"`` or ``"reference"``), one list per completion."""
        ...


def group_same_calls(requests: Sequence[GenerationRequest], size: int) -> list[list[int]]:
    """Indices of ``requests`` in runs of at most ``size`` consecutive identical calls
    (same prompt, max_tokens and stop), so an engine can draw them as one n-sample request."""
    groups: list[list[int]] = []
    for i, req in enumerate(requests):
        last = groups[-1] if groups else None
        if last is not None and len(last) < size and _same_call(requests[last[0]], req):
            last.append(i)
        else:
            groups.append([i])
    return groups


def _same_call(a: GenerationRequest, b: GenerationRequest) -> bool:
    return a.prompt == b.prompt and a.max_tokens == b.max_tokens and a.stop == b.stop


def check_capabilities(backend: Backend, interventions: Sequence[Intervention]) -> None:
    """Refuse, before any sampling, an intervention the backend cannot serve, naming the
    backends that can."""
    from fixable.registry import backends

    missing = [i.kind for i in interventions if i.kind not in backend.capabilities]
    if not missing:
        return
    able = []
    for name in backends.names():
        caps = getattr(backends.get(name), "capabilities", frozenset())
        if all(m in caps for m in missing):
            able.append(name)
    raise CapabilityError(
        f"backend {backend.name!r} cannot do {', '.join(sorted(set(missing)))}; "
        f"backends that can: {', '.join(able) or 'none'}"
    )
