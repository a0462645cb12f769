"""A fake backend whose failures carry their signature, for the rescue tests: the
problem's kind (the prompt's prefix) sets the entropy, the reference log-prob and which
intervention rescues it."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from fixable.backends.base import Generation, GenerationRequest
from fixable.errors import CapabilityError
from fixable.interventions import Intervention
from fixable.tasks.base import Task

# kind → (entropy per token, reference log-prob per token, {intervention label: P(correct)})
KINDS = {
    "easy": (0.8, -0.6, {"retry": 1.0}),
    "hot": (0.05, -0.6, {"temperature(T=1.3)": 0.9}),
    "cold": (2.0, -0.6, {"temperature(T=0.3)": 0.9}),
    "mix": (0.8, -3.0, {"mix(alpha=0.5)": 0.9}),
    "never": (0.8, -0.6, {}),
}
THRESHOLDS = {"reference_drift": 1.0, "answer_dispersion": 0.5, "trajectory_uncertainty": 0.5}


class AnswerTask(Task):
    name = "answers"

    def problems(self, n=None, *, seed=0, split="test"):
        return []

    def extract(self, text):
        m = re.search(r"#(\d+)", text)
        return m.group(1) if m else None

    def check(self, answer, problem):
        return answer == problem.answer


class SignatureBackend:
    """Correct with a probability set by the problem's kind and the intervention; wrong
    answers collapse (one answer) except for ``cold`` (two answers)."""

    name = "signature-fake"
    capabilities = frozenset({"retry", "temperature", "mix", "score", "seeded", "full_entropy"})

    def __init__(self, model: str = "fake-policy", reference: bool = True, length: int = 20):
        self._model = model
        self.reference = reference
        self.length = length
        self.calls: list[tuple[str, int]] = []

    @property
    def model_name(self) -> str:
        return self._model

    def generate(self, requests: Sequence[GenerationRequest], intervention: Intervention):
        self.calls.append((intervention.label, len(requests)))
        out = []
        for r in requests:
            kind = r.prompt.split(":")[0]
            entropy, _, rates = KINDS[kind]
            rng = random.Random(r.seed)
            if rng.random() < rates.get(intervention.label, 0.0):
                text = "#0042"
            else:
                text = f"#{rng.choice([7, 8]) if kind == 'cold' else 7:04d}"
            n = min(self.length, r.max_tokens)
            out.append(Generation(text, [3] * n, [-0.5] * n, [entropy] * n, [-0.5] * n))
        return out

    def score(self, prompts, completions, *, which="policy"):
        if which == "reference" and not self.reference:
            raise CapabilityError("no reference model")
        return [
            [KINDS[p.split(":")[0]][1] if which == "reference" else -0.5] * len(c)
            for p, c in zip(prompts, completions, strict=True)
        ]
