"""``gpqa``: four-way multiple-choice science questions from a file the user supplies.

GPQA is gated (a password-protected zip; a gated Hugging Face dataset whose authors ask
that examples not be published), so fixable ships none of it. Point ``path`` at your copy
of one of its CSVs (``gpqa_diamond.csv`` …) with the columns ``Question``,
``Correct Answer``, ``Incorrect Answer 1``, ``Incorrect Answer 2``, ``Incorrect Answer 3``
(and optionally ``Record ID`` and ``Explanation``); or, with access granted and
``datasets`` installed, leave ``path`` out to load ``Idavidrein/gpqa`` (``subset``).

The four options are shuffled per problem by a generator seeded with
``(choice_seed, record id)``: the order is reproducible, recorded in ``Problem.meta``
(``choice_seed``, ``choice_order``), and independent of which other problems are drawn.
The gold answer is the letter where the correct option landed.

Extraction takes the letter after the last ``answer is``/``Answer:`` marker (``(B)``,
``B``, ``\\boxed{B}``), else a last line that is nothing but a letter.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from fixable.errors import ConfigError
from fixable.registry import tasks
from fixable.tasks.base import Task
from fixable.tasks.loading import (
    Record,
    check_choice,
    iter_shots,
    load_hf,
    read_csv,
    select,
)
from fixable.types import Problem

LETTERS = "ABCD"
COLUMNS = (
    "Question",
    "Correct Answer",
    "Incorrect Answer 1",
    "Incorrect Answer 2",
    "Incorrect Answer 3",
)
SUBSETS = ("diamond", "main", "extended", "experts")
INSTRUCTION = (
    "Answer the following multiple-choice question. Think step by step, then finish with a "
    'line of the form "The answer is (X)" where X is one of A, B, C, D.\n\n'
)


def extract_choice(text: str, letters: str = LETTERS) -> str | None:
    """The chosen letter of a multiple-choice completion, or None."""
    options = re.escape(letters)
    # Markers in any case, but the letter itself upper case: "the answer is a bit" picks nothing.
    marked = re.compile(
        rf"(?i:answer\s+is|answer\s*:|\\boxed\s*\{{)\s*:?\s*\(?\s*([{options}])\s*\)?(?![A-Za-z])"
    )
    found = [m.group(1) for m in marked.finditer(text)]
    if found:
        return found[-1]
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if lines:
        alone = re.fullmatch(rf"\s*\(?([{options}])\)?\.?\s*", lines[-1])
        if alone:
            return alone.group(1)
    return None


@tasks.register("gpqa")
class GPQATask(Task):
    """GPQA multiple choice, from your own copy of its CSV.

    Args:
        path: a GPQA CSV file; None loads ``Idavidrein/gpqa`` (gated; needs access,
            a Hugging Face token and ``datasets``).
        subset: which GPQA subset to load from the Hub (ignored with ``path``).
        template: ``"cot"`` (reason, end with "The answer is (X)") or ``"direct"``
            (the prompt ends in "The answer is (").
        shots: solved examples (other questions of the file) before each question.
        choice_seed: seed of the per-problem shuffle of the options (recorded in meta).
    """

    name = "gpqa"
    splits = ("test",)

    def __init__(
        self,
        path: str | Path | None = None,
        subset: str = "diamond",
        template: str = "cot",
        shots: int = 0,
        choice_seed: int = 0,
    ):
        check_choice("gpqa", "subset", subset, SUBSETS)
        check_choice("gpqa", "template", template, ("cot", "direct"))
        if not isinstance(shots, int) or not 0 <= shots <= 8:
            raise ConfigError(f"gpqa shots must be an integer in [0, 8], got {shots!r}")
        self.path, self.subset, self.template = path, subset, template
        self.shots, self.choice_seed = shots, int(choice_seed)
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        if self._records is None:
            if self.path is None:
                self._records = load_hf("Idavidrein/gpqa", "train", f"gpqa_{self.subset}")
                for record in self._records:
                    for column in COLUMNS:
                        record.get(column)
            else:
                self._records = read_csv(self.path, required=COLUMNS)
        return self._records

    @staticmethod
    def record_key(record: Record) -> str:
        key = str(record.fields.get("Record ID") or "").strip()
        return key or f"row{record.line}"

    def shuffled(self, record: Record) -> tuple[list[str], list[int], str]:
        """The options in this problem's order, that order, and the gold letter."""
        options = [record.get(c).strip() for c in COLUMNS[1:]]
        order = random.Random(f"gpqa-{self.choice_seed}-{self.record_key(record)}").sample(
            range(4), 4
        )
        return [options[i] for i in order], order, LETTERS[order.index(0)]

    def question(self, record: Record) -> str:
        choices, _, _ = self.shuffled(record)
        listed = "\n".join(
            f"({letter}) {choice}" for letter, choice in zip(LETTERS, choices, strict=True)
        )
        return f"Question: {record.get('Question').strip()}\n{listed}\nAnswer:"

    def prompt(self, record: Record, exemplars: list[Record]) -> str:
        shots = ""
        for r in exemplars:
            explanation = str(r.fields.get("Explanation") or "").strip()
            reasoning = f" {explanation}" if explanation and self.template == "cot" else ""
            shots += f"{self.question(r)}{reasoning} The answer is ({self.shuffled(r)[2]}).\n\n"
        head = INSTRUCTION if self.template == "cot" else ""
        tail = " The answer is (" if self.template == "direct" else ""
        return head + shots + self.question(record) + tail

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        check_choice("gpqa", "split", split, self.splits)
        records = self.records()
        out = []
        for record in select(records, n, seed):
            exemplars = (
                list(iter_shots(records, self.shots, seed, exclude=record)) if self.shots else []
            )
            choices, order, gold = self.shuffled(record)
            out.append(
                Problem(
                    id=f"gpqa/{self.record_key(record)}",
                    prompt=self.prompt(record, exemplars),
                    answer=gold,
                    task=self.name,
                    meta={
                        "choices": choices,
                        "choice_order": order,  # position i shows option order[i] (0 = correct)
                        "choice_seed": self.choice_seed,
                        "source": f"{record.source}:{record.line}",
                    },
                )
            )
        return out

    def extract(self, text: str) -> str | None:
        if self.template == "direct":
            text = "The answer is (" + text  # the prompt opened it
        return extract_choice(text)

    def check(self, answer: str, problem: Problem) -> bool:
        return answer == problem.answer

    @property
    def stop(self) -> tuple[str, ...]:
        return ("\n\nQuestion:",)
