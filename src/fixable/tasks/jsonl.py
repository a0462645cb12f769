"""``jsonl``: your own problems from a JSON Lines file, with named fields and a chosen verifier.

Each line is an object with a prompt field and an answer field (names configurable).
``path`` is the file (one split, ``test``) or a directory of ``<split>.jsonl`` files.

Verifiers (extraction → check):

========== ============================================ =======================================
verifier   extraction                                   check
========== ============================================ =======================================
exact      text after the last "answer is"/"Answer:"    equal after collapsing whitespace
           on its line, else the last non-empty line
numeric    as ``gsm8k`` (separators, units, period)     exact decimal equality
math       last ``\\boxed{}`` (as ``math500``)            math-verify equivalence
choice     a letter, as ``gpqa``                         same letter (gold: one letter A–J)
========== ============================================ =======================================
"""

from __future__ import annotations

import re
from pathlib import Path

from fixable.errors import ConfigError, DataError
from fixable.registry import tasks
from fixable.tasks.base import Task
from fixable.tasks.gpqa import extract_choice
from fixable.tasks.gsm8k import canonical_number, extract_number, numbers_equal
from fixable.tasks.loading import Record, check_choice, iter_shots, read_jsonl, resolve_file, select
from fixable.tasks.math500 import equivalent, last_boxed
from fixable.types import Problem

VERIFIERS = ("exact", "numeric", "math", "choice")
CHOICE_LETTERS = "ABCDEFGHIJ"
INSTRUCTIONS = {
    "exact": 'Think step by step, then finish with a line of the form "The answer is: <answer>".',
    "numeric": 'Think step by step, then finish with "The answer is N." where N is a number.',
    "math": "Think step by step, and put your final answer within \\boxed{}.",
    "choice": 'Think step by step, then finish with "The answer is (X)" where X is the letter.',
}
_EXACT_MARKER = re.compile(r"(?i:answer\s+is\s*:?|answer\s*:)[ \t]*(.*)")


def extract_exact(text: str) -> str | None:
    """The rest of the line after the last answer marker, else the last non-empty line."""
    matches = [m.group(1) for m in _EXACT_MARKER.finditer(text) if m.group(1).strip()]
    line = (
        matches[-1] if matches else next((s for s in reversed(text.splitlines()) if s.strip()), "")
    )
    line = line.strip().rstrip(".").strip()
    return line or None


def same_text(answer: str, gold: str) -> bool:
    return " ".join(answer.split()) == " ".join(gold.split())


@tasks.register("jsonl")
class JsonlTask(Task):
    """Problems from a user's JSON Lines file.

    Args:
        path: the ``.jsonl`` file (split ``test``) or a directory of ``<split>.jsonl``.
        prompt_field: field holding the question shown to the model.
        answer_field: field holding the gold answer (a string or a number).
        id_field: field holding a unique id; default: the line number.
        verifier: ``"exact"``, ``"numeric"``, ``"math"`` or ``"choice"`` (see module doc).
        template: ``"cot"`` (the prompt, then the verifier's answer-format instruction) or
            ``"plain"`` (the prompt field verbatim).
        shots: solved examples (other lines of the file, final answers only) before each.
    """

    name = "jsonl"

    def __init__(
        self,
        path: str | Path | None = None,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        id_field: str | None = None,
        verifier: str = "exact",
        template: str = "cot",
        shots: int = 0,
    ):
        if path is None:
            raise ConfigError(
                "jsonl needs path=, a JSON Lines file (or a directory of <split>.jsonl)"
            )
        check_choice("jsonl", "verifier", verifier, VERIFIERS)
        check_choice("jsonl", "template", template, ("cot", "plain"))
        if not isinstance(shots, int) or not 0 <= shots <= 16:
            raise ConfigError(f"jsonl shots must be an integer in [0, 16], got {shots!r}")
        self.path = Path(path).expanduser()
        self.prompt_field, self.answer_field, self.id_field = prompt_field, answer_field, id_field
        self.verifier, self.template, self.shots = verifier, template, shots
        self._records: dict[str, list[Record]] = {}

    def records(self, split: str) -> list[Record]:
        if split not in self._records:
            if self.path.is_file() and split != "test":
                raise ConfigError(
                    f"jsonl split {split!r}: {self.path} is one file (split 'test'); "
                    "pass a directory holding <split>.jsonl files"
                )
            names = (f"{split}.jsonl", f"{split}.jsonl.gz")
            self._records[split] = read_jsonl(resolve_file(self.path, names, f"jsonl {split}"))
        return self._records[split]

    def gold(self, record: Record) -> str:
        """The record's answer in the verifier's canonical form (DataError naming file/line/field)."""
        value = record.get(self.answer_field, (str, int, float))
        if isinstance(value, bool):
            raise DataError(
                f"{record.source}:{record.line}: field {self.answer_field!r} must be a string or number, got bool"
            )
        text = str(value).strip()
        if self.verifier == "numeric":
            number = canonical_number(text)
            if number is None:
                raise DataError(
                    f"{record.source}:{record.line}: field {self.answer_field!r} is not a number: {text!r}"
                )
            return number
        if self.verifier == "choice" and not re.fullmatch(f"[{CHOICE_LETTERS}]", text):
            raise DataError(
                f"{record.source}:{record.line}: field {self.answer_field!r} must be one letter A-J, got {text!r}"
            )
        if not text:
            raise DataError(f"{record.source}:{record.line}: field {self.answer_field!r} is empty")
        return text

    def _shown_answer(self, gold: str) -> str:
        return {
            "exact": f"The answer is: {gold}",
            "numeric": f"The answer is {gold}.",
            "math": f"The final answer is $\\boxed{{{gold}}}$.",
            "choice": f"The answer is ({gold}).",
        }[self.verifier]

    def prompt(self, record: Record, exemplars: list[Record]) -> str:
        shots = "".join(
            f"{r.get(self.prompt_field)}\n{self._shown_answer(self.gold(r))}\n\n" for r in exemplars
        )
        text = shots + record.get(self.prompt_field)
        if self.template == "cot":
            text += f"\n\n{INSTRUCTIONS[self.verifier]}\n"
        return text

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        records = self.records(split)
        keys: dict[int, str] = {}
        seen: set[str] = set()
        for record in records:  # ids are checked over the whole file, whatever is drawn
            key = (
                str(record.get(self.id_field, (str, int)))
                if self.id_field
                else str(record.line - 1)
            )
            if key in seen:
                raise DataError(
                    f"{record.source}:{record.line}: field {self.id_field!r} repeats id {key!r}"
                )
            seen.add(key)
            keys[id(record)] = key
        out = []
        for record in select(records, n, seed):
            key = keys[id(record)]
            exemplars = (
                list(iter_shots(records, self.shots, seed, exclude=record)) if self.shots else []
            )
            out.append(
                Problem(
                    id=f"jsonl/{self.path.stem}/{split}/{key}",
                    prompt=self.prompt(record, exemplars),
                    answer=self.gold(record),
                    task=self.name,
                    meta={"verifier": self.verifier, "source": f"{record.source}:{record.line}"},
                )
            )
        return out

    def extract(self, text: str) -> str | None:
        if self.verifier == "numeric":
            return extract_number(text)
        if self.verifier == "math":
            return last_boxed(text)
        if self.verifier == "choice":
            return extract_choice(text, CHOICE_LETTERS)
        return extract_exact(text)

    def check(self, answer: str, problem: Problem) -> bool:
        if self.verifier == "numeric":
            return numbers_equal(answer, problem.answer)
        if self.verifier == "math":
            return equivalent(answer, problem.answer)
        if self.verifier == "choice":
            return answer == problem.answer
        return same_text(answer, problem.answer)
