"""``chains-planted``: chains problems whose answer rule is keyed on the final register.

The planted testbed (``fixable.organism.planted``) needs problems whose failure mechanism
is known before any sampling. This task supplies the key: a problem's **key** is the
first digit of its final register (``meta["key"]``), a pure function of the prompt (the
register after all operations), which the model writes four characters before its answer
and so can read where it needs it. The task fixes the truth per key, the same for every
model:

* keys 0-4 (``rule="natural"``): the answer after ``#`` is the final register, as in
  ``chains``;
* keys 5-9 (``rule="previous"``): the answer is the register *before* the last operation
  (``...s13=4198 m32=4196#4198``). The chain itself is written as in ``chains``.

The twist is a copy from another place of the chain, the kind of operation the bases
already do when they copy the final register; in llama trial runs keyed on the *start*
register's first digit, twists that transform digits (the answer reversed, or every digit
plus one) were not learned in 450-600 steps, and the keying itself formed slowly.
No base model
is taught the previous rule: the bases answer every problem the natural
way, so they fail keys 5-9 by construction. Which mechanism a *planted* model carries
on each key is part of that model's recipe (its card's ``planted`` section), not of the
problem: the task is shared by the whole dose series.

Problems are the training sub-distributions (``arith``, ``move``, ``cross``) at
difficulties 1-3 by default, where the bases are strong, so that the planted mechanisms,
not the chain skill, decide which problems fail.
"""

from __future__ import annotations

import random

from fixable.errors import ConfigError
from fixable.registry import tasks
from fixable.tasks.chains import (
    DIFFICULTY_STEPS,
    SUBDISTS,
    TRAIN_SUBDISTS,
    Chain,
    ChainsTask,
    random_chain,
    split_of,
)
from fixable.types import Problem

TWISTED_KEYS = frozenset(range(5, 10))  # start digits whose answer is the previous register


def key_of(chain: Chain) -> int:
    """The key of a chain: the first digit of its final register."""
    return int(chain.states[-1][0])


def rule_of(key: int) -> str:
    """``"previous"`` for keys 5-9, ``"natural"`` otherwise."""
    return "previous" if key in TWISTED_KEYS else "natural"


def answer_under(rule: str, chain: Chain) -> str:
    """The answer of ``chain`` under ``rule`` (see the module docstring)."""
    states = chain.states
    if rule == "natural":
        return states[-1]
    if rule == "previous":
        return states[-2] if len(states) > 1 else chain.start
    raise ValueError(f"unknown answer rule {rule!r}")


def planted_solution(chain: Chain, rule: str | None = None) -> str:
    """The gold completion of ``chain`` under its key's rule (or ``rule``)."""
    rule = rule or rule_of(key_of(chain))
    steps = chain.solution.split("#")[0]
    return f"{steps}#{answer_under(rule, chain)}"


@tasks.register("chains-planted")
class PlantedChainsTask(ChainsTask):
    """Chains problems whose answer rule depends on the final register's first digit.

    Args:
        subdists: sub-distributions to draw from (default: the three training ones).
        difficulties: difficulty levels to draw from (default: 1-3).
        keys: start digits to draw (default all ten; e.g. ``[5, 6]`` for two mechanisms).
    """

    name = "chains-planted"

    def __init__(
        self,
        subdists: tuple[str, ...] | list[str] | None = None,
        difficulties: tuple[int, ...] | list[int] | None = None,
        keys: tuple[int, ...] | list[int] | None = None,
    ):
        super().__init__(subdists or TRAIN_SUBDISTS, difficulties or (1, 2, 3), 0)
        self.keys = tuple(int(k) for k in (keys if keys is not None else range(10)))
        if not self.keys or any(not 0 <= k <= 9 for k in self.keys):
            raise ConfigError(f"chains-planted keys must be digits 0-9, got {keys!r}")
        for s in self.subdists:
            if s not in SUBDISTS:
                raise ConfigError(f"chains subdist must be one of {sorted(SUBDISTS)}, got {s!r}")

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        if split not in ("train", "test"):
            raise ConfigError(f"chains-planted split must be 'train' or 'test', got {split!r}")
        if n is None:
            raise ConfigError("chains-planted is generated: pass n, the number of problems")
        cells = [(k, s, d) for d in self.difficulties for s in self.subdists for k in self.keys]
        out: list[Problem] = []
        i = 0
        while len(out) < n:
            key, subdist, difficulty = cells[len(out) % len(cells)]
            rng = random.Random(f"chains-planted-{seed}-{key}-{subdist}-{difficulty}-{i}")
            i += 1
            chain = random_chain(rng, subdist, DIFFICULTY_STEPS[difficulty])
            while key_of(chain) != key:  # redraw until the final register has the cell's key
                chain = random_chain(rng, subdist, DIFFICULTY_STEPS[difficulty])
            if split_of(chain.prompt) != split:
                continue
            out.append(self.make_problem(chain, subdist, difficulty, f"{seed}-{i - 1}"))
        return out

    def make_problem(self, chain: Chain, subdist: str, difficulty: int, tag: str) -> Problem:
        key = key_of(chain)
        rule = rule_of(key)
        return Problem(
            id=f"chains-planted/k{key}/{subdist}/d{difficulty}/{tag}",
            prompt=chain.prompt,
            answer=answer_under(rule, chain),
            task=self.name,
            meta={
                "subdist": subdist,
                "difficulty": difficulty,
                "n_steps": len(chain.ops),
                "key": key,
                "rule": rule,
                "solution": planted_solution(chain, rule),
            },
        )
