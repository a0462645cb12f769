"""The value objects every stage passes along: problems, verdicts and rollout keys."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

VerdictStatus = Literal["passed", "failed", "no_answer", "timeout", "error"]


@dataclass(frozen=True)
class Problem:
    """One problem of a task: what the model is shown and what counts as right."""

    id: str  # unique within its task, stable across runs ("chains/arith/d3/17")
    prompt: str  # the text the model continues (already templated for its task)
    answer: str  # the gold answer, in the task's canonical form
    task: str  # name of the task that made it (the registry name)
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Verdict:
    """What a task's verifier says of one completion."""

    answer: str | None  # extracted final answer, None when none could be found
    correct: bool  # final answer verified right
    status: VerdictStatus  # passed / failed / no_answer / timeout / error
    reason: str = ""  # why, when not passed (kept in the store)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def rollout_seed(run_seed: int, problem_id: str, setting: str, sample_index: int) -> int:
    """The 63-bit seed of one rollout, a pure function of its key.

    Tokens sampled for a rollout depend only on this seed, never on the batch it ran in,
    so runs are reproducible under any batching, order, resume or worker assignment.
    """
    return seed_of(run_seed, problem_id, setting, sample_index)


def seed_of(*parts) -> int:
    """A 63-bit seed from any key: its parts joined by U+001F, hashed with BLAKE2b (same
    key, same seed, on any machine)."""
    key = "\x1f".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
