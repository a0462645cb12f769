"""``chains``: the synthetic multi-step task the model organism is trained and studied on.

A problem is a 4-digit register and a list of operations; the solution writes every
operation with the register after it, then the final register after ``#``::

    prompt      4821|a27 s13 m32|
    completion  a27=4891 s13=4198 m32=4196#4196

Operations (each three characters: a letter and two digits ``p``, ``q``/``k``):

=====  ====================================  ==========
op     effect on the register ``d``           skill
=====  ====================================  ==========
``a``  ``d[p] = (d[p] + k) % 10``            arithmetic
``m``  ``d[p] = (d[p] * k) % 10``            arithmetic
``s``  swap ``d[p]`` and ``d[q]``            movement
``c``  ``d[q] = d[p]``                       movement
``x``  ``d[q] = (d[p] + d[q]) % 10``         cross-digit
``n``  nothing (a distractor to copy over)   —
``h``  ``d[p] = (ALIEN[d[p]] + k) % 10``     never taught
=====  ====================================  ==========

Named sub-distributions draw their operations from one skill, so post-training on one of
them shifts the model: ``arith`` (a, m), ``move`` (s, c), ``cross`` (x, a, s) and
``alien`` (a, s and at least one h). ``h`` appears in no training data of any model: the
``alien`` problems are structural failures by construction. Difficulty 1–5 sets the number
of steps (2, 4, 6, 9, 12); ``distractors`` inserts no-op steps.

Guessing is negligible: the final answer is one of 10 000 registers (a uniform guess is
right 0.01 % of the time), and the verifier also checks the whole written chain
(``Verdict.extra["chain_correct"]``), reported separately.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from fixable.errors import ConfigError
from fixable.registry import tasks
from fixable.tasks.base import Task
from fixable.types import Problem, Verdict

N_DIGITS = 4
ALIEN = (3, 7, 0, 9, 5, 1, 8, 2, 6, 4)  # a fixed derangement of the digits; no model is taught it
SUBDISTS: dict[str, tuple[str, ...]] = {
    "arith": ("a", "m"),
    "move": ("s", "c"),
    "cross": ("x", "a", "s"),
    "alien": ("a", "s", "h"),
}
TRAIN_SUBDISTS = ("arith", "move", "cross")  # what pretraining sees; never "alien"
DIFFICULTY_STEPS = {1: 2, 2: 4, 3: 6, 4: 9, 5: 12}
TEST_SHARE = 5  # one problem in TEST_SHARE (by hash of its prompt) belongs to the test split
_ANSWER = re.compile(r"#(\d{4})")


def apply_op(state: str, op: str) -> str:
    """The register after one operation (``op`` is three characters, e.g. ``"a27"``)."""
    d = [int(c) for c in state]
    kind, p, q = op[0], int(op[1]), int(op[2])
    if kind == "a":
        d[p] = (d[p] + q) % 10
    elif kind == "m":
        d[p] = (d[p] * q) % 10
    elif kind == "s":
        d[p], d[q] = d[q], d[p]
    elif kind == "c":
        d[q] = d[p]
    elif kind == "x":
        d[q] = (d[p] + d[q]) % 10
    elif kind == "h":
        d[p] = (ALIEN[d[p]] + q) % 10
    elif kind != "n":
        raise ValueError(f"unknown chains operation {op!r}")
    return "".join(map(str, d))


def _random_op(rng: random.Random, kind: str) -> str:
    p = rng.randrange(N_DIGITS)
    if kind in ("s", "x", "c"):
        q = rng.choice([i for i in range(N_DIGITS) if i != p])
    elif kind == "m":
        q = rng.randrange(2, 10)
    elif kind == "n":
        q = rng.randrange(N_DIGITS)
    else:
        q = rng.randrange(1, 10)
    return f"{kind}{p}{q}"


def split_of(prompt: str) -> str:
    """``"test"`` or ``"train"``, a pure function of the prompt, so the splits never overlap."""
    h = hashlib.blake2b(prompt.encode(), digest_size=4).digest()
    return "test" if int.from_bytes(h, "little") % TEST_SHARE == 0 else "train"


@dataclass(frozen=True)
class Chain:
    start: str
    ops: tuple[str, ...]

    @property
    def states(self) -> tuple[str, ...]:
        out, s = [], self.start
        for op in self.ops:
            s = apply_op(s, op)
            out.append(s)
        return tuple(out)

    @property
    def prompt(self) -> str:
        return f"{self.start}|{' '.join(self.ops)}|"

    @property
    def solution(self) -> str:
        steps = " ".join(f"{op}={st}" for op, st in zip(self.ops, self.states, strict=True))
        return f"{steps}#{self.states[-1]}"


def random_chain(rng: random.Random, subdist: str, n_steps: int, distractors: int = 0) -> Chain:
    """One chain of ``n_steps`` operations from ``subdist`` plus ``distractors`` no-ops."""
    kinds = SUBDISTS[subdist]
    ops = [_random_op(rng, rng.choice(kinds)) for _ in range(n_steps)]
    if subdist == "alien" and not any(op[0] == "h" for op in ops):
        ops[rng.randrange(n_steps)] = _random_op(rng, "h")
    for _ in range(distractors):
        ops.insert(rng.randrange(len(ops) + 1), _random_op(rng, "n"))
    start = "".join(str(rng.randrange(10)) for _ in range(N_DIGITS))
    return Chain(start, tuple(ops))


@tasks.register("chains")
class ChainsTask(Task):
    """Multi-step register problems with an exact answer and chain verifier.

    Args:
        subdists: sub-distributions to draw from, in turn (default: all four).
        difficulties: difficulty levels 1–5 to draw from, in turn (default: all).
        distractors: no-op steps inserted into every problem.
    """

    name = "chains"

    def __init__(
        self,
        subdists: tuple[str, ...] | list[str] | None = None,
        difficulties: tuple[int, ...] | list[int] | None = None,
        distractors: int = 0,
    ):
        # one value (``-T difficulties=5`` on the command line) means a list of one
        one = lambda v: (v,) if isinstance(v, (int, str)) else v  # noqa: E731
        self.subdists = tuple(one(subdists) or SUBDISTS)
        self.difficulties = tuple(one(difficulties) or DIFFICULTY_STEPS)
        self.distractors = int(distractors)
        for s in self.subdists:
            if s not in SUBDISTS:
                raise ConfigError(f"chains subdist must be one of {sorted(SUBDISTS)}, got {s!r}")
        for d in self.difficulties:
            if d not in DIFFICULTY_STEPS:
                raise ConfigError(f"chains difficulty must be in [1, 5], got {d!r}")
        if not 0 <= self.distractors <= 8:
            raise ConfigError(f"chains distractors must be in [0, 8], got {distractors!r}")

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        if split not in ("train", "test"):
            raise ConfigError(f"chains split must be 'train' or 'test', got {split!r}")
        if n is None:
            raise ConfigError("chains is generated: pass n, the number of problems")
        cells = [(s, d) for d in self.difficulties for s in self.subdists]
        out: list[Problem] = []
        i = 0
        while len(out) < n:
            subdist, difficulty = cells[len(out) % len(cells)]
            rng = random.Random(f"chains-{seed}-{subdist}-{difficulty}-{i}")
            i += 1
            chain = random_chain(rng, subdist, DIFFICULTY_STEPS[difficulty], self.distractors)
            if split_of(chain.prompt) != split:
                continue
            out.append(self.make_problem(chain, subdist, difficulty, f"{seed}-{i - 1}"))
        return out

    def make_problem(self, chain: Chain, subdist: str, difficulty: int, tag: str) -> Problem:
        return Problem(
            id=f"chains/{subdist}/d{difficulty}/{tag}",
            prompt=chain.prompt,
            answer=chain.states[-1],
            task=self.name,
            meta={
                "subdist": subdist,
                "difficulty": difficulty,
                "n_steps": len(chain.ops),
                "solution": chain.solution,
            },
        )

    def extract(self, text: str) -> str | None:
        m = _ANSWER.search(text)
        return m.group(1) if m else None

    def check(self, answer: str, problem: Problem) -> bool:
        return answer == problem.answer

    def verify(self, text: str, problem: Problem) -> Verdict:
        verdict = super().verify(text, problem)
        expected = problem.meta["solution"].split("#")[0].split(" ")
        written = text.split("#")[0].split(" ")
        steps_ok = sum(
            a == b for a, b in zip(written, expected, strict=False)
        )  # may differ in length
        chain_ok = verdict.correct and written == expected
        extra = {"chain_correct": chain_ok, "steps_correct": steps_ok}
        return Verdict(verdict.answer, verdict.correct, verdict.status, verdict.reason, extra)

    @staticmethod
    def solution(problem: Problem) -> str:
        """The gold completion (step by step), for supervised training."""
        return problem.meta["solution"]
