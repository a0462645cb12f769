"""A deterministic fake backend for testing the store and the sampling orchestration.

``FakeBackend`` solves chains problems (it reads the gold answer off the prompt) with a
probability that depends on the problem's hash and on the intervention, so a sweep over
it has every regime: problems it always solves, unlucky ones that retry fixes, steerable
ones only a lower temperature fixes, and structural ones nothing fixes. Everything it
returns is a pure function of the request's seed, like a seeded backend.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from fixable.backends.base import Generation, GenerationRequest
from fixable.errors import CapabilityError
from fixable.interventions import Intervention
from fixable.tasks.chains import Chain

REGIMES = ("easy", "unlucky", "steerable", "structural")


def regime_of(prompt: str) -> str:
    h = hashlib.blake2b(prompt.encode(), digest_size=2).digest()
    return REGIMES[int.from_bytes(h, "little") % len(REGIMES)]


def solve_probability(prompt: str, intervention: Intervention) -> float:
    regime = regime_of(prompt)
    if regime == "easy":
        return 0.9
    if regime == "unlucky":
        return 0.1
    if regime == "steerable":
        cold = intervention.kind == "temperature" and intervention.value < 1.0
        return 0.8 if cold else 0.0
    return 0.0


def _chain(prompt: str) -> Chain:
    start, ops, _ = prompt.split("|")
    return Chain(start, tuple(ops.split()))


class FakeBackend:
    name = "fake"
    capabilities = frozenset(
        {"retry", "temperature", "mix", "checkpoint", "dola", "score", "seeded", "full_entropy"}
    )

    def __init__(
        self,
        model: str = "fake-model",
        *,
        reference: bool = True,
        fail_every: int = 0,
        calls: list | None = None,
    ):
        self._model = model
        self.reference = reference
        self.fail_every = fail_every  # every fail_every-th seed (by value) fails in the backend
        self.calls = calls if calls is not None else []  # (intervention label, n requests)

    @property
    def model_name(self) -> str:
        return self._model

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        self.calls.append((intervention.label, len(requests)))
        return [self._one(r, intervention) for r in requests]

    def _one(self, request: GenerationRequest, intervention: Intervention) -> Generation:
        if self.fail_every and request.seed % self.fail_every == 0:
            return Generation(
                "",
                [],
                [],
                [],
                None,
                finish_reason="error",
                error="fake server answered 500 five times",
            )
        rng = random.Random(request.seed)
        chain = _chain(request.prompt)
        text = chain.solution
        if rng.random() >= solve_probability(request.prompt, intervention):
            wrong = (int(chain.states[-1]) + rng.randrange(1, 9999)) % 10000
            text = text.rsplit("#", 1)[0] + f"#{wrong:04d}"
        text = text[: request.max_tokens]
        ids = [3 + (ord(c) % 50) for c in text] + [2]
        logprobs = [-rng.random() for _ in ids]
        entropies = [rng.random() * 2 for _ in ids]
        finish = "stop" if len(text) < request.max_tokens else "length"
        return Generation(
            text, ids, logprobs, entropies, [x - 0.01 for x in logprobs], finish_reason=finish
        )

    def score(
        self, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, which: str = "policy"
    ) -> list[list[float]]:
        if which == "reference" and not self.reference:
            raise CapabilityError("fake backend has no reference model")
        out = []
        for prompt, ids in zip(prompts, completions, strict=True):
            rng = random.Random(f"{which}/{prompt}/{list(ids)}")
            out.append([-rng.random() for _ in ids])
        return out
