"""``gsm8k``: grade-school math word problems with an exact numeric verifier.

Data: the JSON Lines files of openai/grade-school-math (``{"question", "answer"}``, the
gold after ``#### `` on the answer's last line), read from ``path`` (a file or a
directory holding ``test.jsonl``/``train.jsonl``), or from the Hugging Face Hub
(``openai/gsm8k``, config ``main``) when no path is given and ``datasets`` is installed.

Extraction takes the number after the *last* answer marker in the completion
(``The answer is``, ``####``, ``\\boxed{}``, ``Answer:``), else the last number written.
A number may carry thousands separators (``1,450,000``), a currency sign, a unit
(``18 dollars``, ``25%``) and a trailing period. Verification is exact decimal equality
(``18.00`` equals ``18``; ``18.5`` does not).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path

from fixable.errors import ConfigError, DataError
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

# A number as people write it: optional sign and currency, thousands separators or plain
# digits, optional decimals. Unicode minus and a space after "$" are common in model text.
NUMBER = r"[-−]?\s?\$?\s?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-−]?\.\d+"
_NUMBER = re.compile(NUMBER)
# Markers after which a completion states its final answer; the last one written wins.
_MARKERS = re.compile(
    r"answer\s+is\s*:?|####|\\boxed\s*\{|final\s+answer\s*:|answer\s*:",
    re.IGNORECASE,
)
_CALCULATOR = re.compile(r"<<[^>]*>>")  # GSM8K's calculator annotations, e.g. <<48/2=24>>
MARKER_WINDOW = 60  # characters after a marker in which its number must start

INSTRUCTION = (
    "Solve the following math problem step by step. "
    'Finish with a line of the form "The answer is N." where N is the final number.\n\n'
)


def canonical_number(text: str) -> str | None:
    """``"$1,450,000."`` → ``"1450000"``; ``"18.50"`` → ``"18.5"``; None when not a number."""
    cleaned = text.replace("−", "-").replace("$", "").replace(",", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_number(text: str) -> str | None:
    """The final numeric answer of a completion, canonical (see :func:`canonical_number`)."""
    for marker in reversed(list(_MARKERS.finditer(text))):
        window = text[marker.end() : marker.end() + MARKER_WINDOW]
        if marker.group(0).lower().startswith("\\boxed"):
            window = window.split("}", 1)[0]
        found = _NUMBER.search(window)
        if found:
            return canonical_number(found.group(0))
    numbers = _NUMBER.findall(text)
    return canonical_number(numbers[-1]) if numbers else None


def numbers_equal(answer: str, gold: str) -> bool:
    """Exact decimal equality of two canonical numbers."""
    try:
        return Decimal(answer) == Decimal(gold)
    except InvalidOperation:
        return False


def gold_of(solution: str, where: str = "") -> str:
    """The gold number after the last ``#### `` of a GSM8K reference solution."""
    if "####" not in solution:
        raise DataError(f"{where}: field 'answer' has no '#### <number>' line")
    number = canonical_number(solution.rsplit("####", 1)[1].strip())
    if number is None:
        raise DataError(f"{where}: field 'answer' ends in a non-number after '####'")
    return number


def solution_steps(solution: str) -> int:
    """Steps of a reference solution: its non-empty lines before the ``####`` line (one
    calculation each in GSM8K's solutions)."""
    reasoning = solution.rsplit("####", 1)[0]
    return sum(1 for line in reasoning.splitlines() if line.strip())


def worked_solution(solution: str) -> str:
    """A reference solution as a model should write it: no calculator notes, 'The answer is'."""
    reasoning, final = solution.rsplit("####", 1)
    return f"{_CALCULATOR.sub('', reasoning).strip()}\nThe answer is {final.strip()}."


@tasks.register("gsm8k")
class GSM8KTask(Task):
    """GSM8K word problems, answered by a number.

    Args:
        path: a GSM8K ``.jsonl`` file, or a directory with ``test.jsonl``/``train.jsonl``;
            None loads ``openai/gsm8k`` from the Hugging Face Hub (needs ``datasets``).
        template: ``"cot"`` (reason step by step, end with "The answer is N.") or
            ``"direct"`` (the prompt ends in "The answer is", for the number alone).
        shots: worked examples from the train split put before each question (0: none).
        steps: keep only problems whose reference solution has this many steps (one
            integer or a list; :func:`solution_steps`), e.g. a slice of easier problems.
        half: 0 or 1 keeps the (steps-filtered) records at even or odd positions of the
            file: two disjoint halves of one slice (``fixable real select`` measures on
            half 0, a study probes half 1). None (default): all of them.
    """

    name = "gsm8k"
    splits = ("test", "train")

    def __init__(
        self,
        path: str | Path | None = None,
        template: str = "cot",
        shots: int = 0,
        steps: int | list[int] | None = None,
        half: int | None = None,
    ):
        check_choice("gsm8k", "template", template, ("cot", "direct"))
        if not isinstance(shots, int) or not 0 <= shots <= 16:
            raise ConfigError(f"gsm8k shots must be an integer in [0, 16], got {shots!r}")
        self.path, self.template, self.shots = path, template, int(shots)
        self.steps = int_choices("gsm8k", "steps", steps, 1, 100)
        take_half("gsm8k", [], half)  # validate now
        self.half = half
        self._records: dict[str, list[Record]] = {}

    def records(self, split: str) -> list[Record]:
        check_choice("gsm8k", "split", split, self.splits)
        if split not in self._records:
            if self.path is None:
                self._records[split] = load_hf("openai/gsm8k", split, "main")
            else:
                names = (f"{split}.jsonl", f"{split}.jsonl.gz")
                self._records[split] = read_jsonl(resolve_file(self.path, names, f"gsm8k {split}"))
        return self._records[split]

    def prompt(self, question: str, exemplars: list[Record] = ()) -> str:
        shots = "".join(
            f"Question: {r.get('question')}\nAnswer: {worked_solution(r.get('answer'))}\n\n"
            for r in exemplars
        )
        head = INSTRUCTION if self.template == "cot" else ""
        tail = " The answer is" if self.template == "direct" else ""
        return f"{head}{shots}Question: {question}\nAnswer:{tail}"

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        exemplars = list(iter_shots(self.records("train"), self.shots, seed)) if self.shots else []
        # An exemplar never doubles as a problem (only possible when evaluating on train).
        pool = [r for r in self.records(split) if not any(r is e for e in exemplars)]
        if self.steps is not None:
            pool = [r for r in pool if solution_steps(r.get("answer")) in self.steps]
        records = select(take_half("gsm8k", pool, self.half), n, seed)
        out = []
        for record in records:
            where = f"{record.source}:{record.line}"
            out.append(
                Problem(
                    id=f"gsm8k/{split}/{record.line - 1}",
                    prompt=self.prompt(record.get("question"), exemplars),
                    answer=gold_of(record.get("answer"), where),
                    task=self.name,
                    meta={"split": split, "line": record.line, "solution": record.get("answer")},
                )
            )
        return out

    def extract(self, text: str) -> str | None:
        if self.template == "direct":
            text = "The answer is" + text  # the prompt already said it
        return extract_number(text)

    def check(self, answer: str, problem: Problem) -> bool:
        return numbers_equal(answer, problem.answer)

    @property
    def stop(self) -> tuple[str, ...]:
        return ("\n\nQuestion:",)
