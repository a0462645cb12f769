"""``math500``: the 500-problem MATH test subset, answered in ``\\boxed{}``, checked by math-verify.

Data: ``test.jsonl`` of openai/prm800k's ``math_splits`` (``{"problem", "solution",
"answer", "subject", "level", "unique_id"}``), from ``path`` (the file or its directory),
or ``HuggingFaceH4/MATH-500`` from the Hugging Face Hub when no path is given.

Extraction takes the contents of the *last* ``\\boxed{...}`` (or ``\\fbox{...}``) with
balanced braces; a completion without one has no answer. Equivalence is decided by the
maintained ``math-verify`` library (LaTeX → SymPy, then numeric, symbolic, set, interval
and matrix comparison), not by hand-written string rules. Its timeouts use
``signal.alarm``, which only works in the main thread: called from another thread, the
check runs without a timeout (logged once).
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path

from fixable.errors import ConfigError
from fixable.registry import tasks
from fixable.tasks.base import Task
from fixable.tasks.loading import (
    Record,
    check_choice,
    int_choices,
    iter_shots,
    load_hf,
    read_jsonl,
    resolve_file,
    select,
    take_half,
)
from fixable.types import Problem

log = logging.getLogger(__name__)

INSTRUCTION = (
    "Solve the following math problem step by step. Put your final answer within \\boxed{}.\n\n"
)
VERIFY_TIMEOUT_S = 5
_BOX_COMMANDS = ("\\boxed", "\\fbox")
_warned_thread = False


def last_boxed(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}``/``\\fbox{...}`` (braces balanced), or None.

    Also reads the brace-less form ``\\boxed 5`` up to the next space or ``$``.
    """
    start = max(text.rfind(c) for c in _BOX_COMMANDS)
    while start >= 0:
        command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
        i = start + len(command)
        if text.startswith(" ", i) and not text.startswith(" {", i):
            rest = text[i + 1 :]
            word = rest.split("$", 1)[0].split(None, 1)[0] if rest.strip() else ""
            if word:
                return word
        else:
            i = text.find("{", i)
            if i >= 0 and not text[start + len(command) : i].strip():
                depth = 0
                for j in range(i, len(text)):
                    depth += {"{": 1, "}": -1}.get(text[j], 0)
                    if depth == 0:
                        return text[i + 1 : j].strip()
        start = max(text.rfind(c, 0, start) for c in _BOX_COMMANDS)
    return None


def _timeouts_available() -> int | None:
    """math-verify's timeout (seconds) where signals work, else None (and a one-time log)."""
    global _warned_thread
    if threading.current_thread() is threading.main_thread():
        return VERIFY_TIMEOUT_S
    if not _warned_thread:
        _warned_thread = True
        log.warning(
            "math500: checking answers outside the main thread, without math-verify timeouts"
        )
    return None


def _math_verify():
    try:
        import math_verify  # imported here: it pulls in sympy and antlr
    except ImportError:
        raise ConfigError(
            "checking math answers needs math-verify: pip install 'fixable[bench]'"
        ) from None
    return math_verify


@functools.lru_cache(maxsize=4096)
def _parsed(latex: str, timeout: int | None):
    return _math_verify().parse(f"$\\boxed{{{latex}}}$", parsing_timeout=timeout)


def equivalent(answer: str, gold: str) -> bool:
    """Whether the LaTeX ``answer`` is mathematically equal to ``gold`` (math-verify)."""
    if answer.strip() == gold.strip():
        return True
    verify = _math_verify().verify

    timeout = _timeouts_available()
    gold_parsed, answer_parsed = _parsed(gold, timeout), _parsed(answer, timeout)
    if not gold_parsed or not answer_parsed:
        return False
    return bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout))


@tasks.register("math500")
class MATH500Task(Task):
    """MATH-500 competition problems with a ``\\boxed{}`` final answer.

    Args:
        path: MATH-500's ``test.jsonl`` or its directory; None loads
            ``HuggingFaceH4/MATH-500`` from the Hugging Face Hub (needs ``datasets``).
        template: ``"cot"`` (solve step by step, box the answer) or ``"direct"`` (the
            prompt ends in ``\\boxed{`` and the model writes only the answer).
        shots: worked examples before each problem, drawn from ``shots_path``.
        shots_path: JSON Lines of worked problems (``problem``, ``solution``), e.g. MATH's
            train split; MATH-500 itself has no train split to draw from.
        levels: keep only problems of these difficulty levels (1–5; one integer or a list).
        half: 0 or 1 keeps the (level-filtered) records at even or odd positions of the
            file, two disjoint halves of one slice (see ``fixable.tasks.gsm8k``); None: all.
    """

    name = "math500"
    splits = ("test",)

    def __init__(
        self,
        path: str | Path | None = None,
        template: str = "cot",
        shots: int = 0,
        shots_path: str | Path | None = None,
        levels: int | list[int] | None = None,
        half: int | None = None,
    ):
        check_choice("math500", "template", template, ("cot", "direct"))
        if not isinstance(shots, int) or not 0 <= shots <= 8:
            raise ConfigError(f"math500 shots must be an integer in [0, 8], got {shots!r}")
        if shots and shots_path is None:
            raise ConfigError(
                "math500 shots need shots_path=, a JSONL file of worked problems with "
                "'problem' and 'solution' fields (MATH-500 has no train split)"
            )
        self.path, self.template, self.shots, self.shots_path = path, template, shots, shots_path
        self.levels = int_choices("math500", "levels", levels, 1, 5)
        take_half("math500", [], half)  # validate now
        self.half = half
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        if self._records is None:
            if self.path is None:
                self._records = load_hf("HuggingFaceH4/MATH-500", "test")
            else:
                file = resolve_file(self.path, ("test.jsonl", "test.jsonl.gz"), "math500 test")
                self._records = read_jsonl(file)
        return self._records

    def prompt(self, problem: str, exemplars: list[Record] = ()) -> str:
        shots = "".join(
            f"Problem: {r.get('problem')}\nSolution: {r.get('solution')}\n\n" for r in exemplars
        )
        head = INSTRUCTION if self.template == "cot" else ""
        tail = " The final answer is $\\boxed{" if self.template == "direct" else ""
        return f"{head}{shots}Problem: {problem}\nSolution:{tail}"

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        check_choice("math500", "split", split, self.splits)
        exemplars = []
        if self.shots:
            exemplars = list(iter_shots(read_jsonl(self.shots_path), self.shots, seed))
        out = []
        pool = self.records()
        if self.levels is not None:
            pool = [r for r in pool if r.get("level", int) in self.levels]
        for record in select(take_half("math500", pool, self.half), n, seed):
            unique_id = record.get("unique_id")
            key = unique_id.removeprefix("test/").removesuffix(".json")
            out.append(
                Problem(
                    id=f"math500/{key}",
                    prompt=self.prompt(record.get("problem"), exemplars),
                    answer=record.get("answer"),
                    task=self.name,
                    meta={
                        "subject": record.get("subject"),
                        "level": record.get("level", int),
                        "unique_id": unique_id,
                        "solution": record.get("solution"),
                    },
                )
            )
        return out

    def extract(self, text: str) -> str | None:
        if self.template == "direct":
            text = "\\boxed{" + text  # the prompt opened the box
        return last_boxed(text)

    def check(self, answer: str, problem: Problem) -> bool:
        return equivalent(answer, problem.answer)

    @property
    def stop(self) -> tuple[str, ...]:
        return ("\n\nProblem:",)
