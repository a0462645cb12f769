"""``cruxeval``: predict what a short Python function returns (or an input that gives an output).

Data: ``cruxeval.jsonl`` of facebookresearch/cruxeval (``{"code", "input", "output", "id"}``,
800 functions named ``f``) from ``path`` (the file or its directory), or ``cruxeval-org/cruxeval``
from the Hugging Face Hub when no path is given.

Modes:

- ``output`` (CRUXEval-O, default): given ``f`` and ``assert f(<input>) == ??``, write the
  output. Correct when ``assert f(<input>) == <prediction>`` holds when executed.
- ``input`` (CRUXEval-I): given ``f`` and ``assert f(??) == <output>``, write any input.
  Correct when ``assert f(<prediction>) == <output>`` holds. Many inputs can be right.

Answers go in ``[ANSWER] assert ... [/ANSWER]``; extraction parses the last assertion with
``ast`` and takes its right-hand side (output mode) or the arguments of its call (input
mode). Predictions must be Python *literals* (checked with ``ast.literal_eval`` inside the
sandbox): a prediction such as ``f('abc')`` would make the assertion true by construction,
and an argument expression could rebind ``f``. 788 of the 800 gold inputs are literals; the
other 12 (``dict(...)``, ``range(...)``, lambdas, string-method calls, a name defined by the
code) cannot be given as input predictions. Every check executes in :mod:`fixable.sandbox`; no model text runs as
code, only the dataset's function.
"""

from __future__ import annotations

import ast
from pathlib import Path

from fixable.errors import ConfigError
from fixable.registry import tasks
from fixable.sandbox import Program, Sandbox
from fixable.tasks.humaneval import CodeTask
from fixable.tasks.loading import (
    Record,
    check_choice,
    iter_shots,
    load_hf,
    read_jsonl,
    resolve_file,
    select,
    take_half,
)
from fixable.types import Problem

MAX_ANSWER_CHARS = 20_000  # longer answers are not parsed (and cannot be a sensible literal)
INSTRUCTIONS = {
    "output": (
        "You are given a Python function and an assertion containing an input to the function. "
        "Complete the assertion with a literal (no unsimplified expressions, no function calls) "
        "containing the output when executing the provided code on the given input, even if the "
        "function is incorrect or incomplete. {how} the full assertion with the correct output "
        "in [ANSWER] and [/ANSWER] tags.\n\n"
    ),
    "input": (
        "You are given a Python function and an assertion with its output. Find any input such "
        "that executing the function on it leads to the given output, written as Python literals "
        "(no expressions, no function calls). There may be several answers; give one. {how} the "
        "full assertion with the input in [ANSWER] and [/ANSWER] tags.\n\n"
    ),
}
HOW = {
    "cot": "Think step by step, executing the program, then give",
    "direct": "Give only",
}

# Trusted test code run in the sandbox; the prediction arrives as a string, never as code.
OUTPUT_TEST = """\
import ast as _ast
try:
    _predicted = _ast.literal_eval({prediction!r})
except Exception:
    raise AssertionError("the prediction is not a Python literal") from None
assert f({input}) == _predicted, {message!r}
"""
INPUT_TEST = """\
import ast as _ast
try:
    _call = _ast.parse("f(" + {prediction!r} + ")", mode="eval").body
    if not (isinstance(_call, _ast.Call) and isinstance(_call.func, _ast.Name) and _call.func.id == "f"):
        raise ValueError("not a single call of f")
    _args = [_ast.literal_eval(a) for a in _call.args]
    if any(k.arg is None for k in _call.keywords):
        raise ValueError("** arguments")
    _kwargs = {{k.arg: _ast.literal_eval(k.value) for k in _call.keywords}}
except Exception:
    raise AssertionError("the predicted input is not a list of Python literals") from None
assert f(*_args, **_kwargs) == {output}, "f(prediction) does not return the output"
"""


def answer_region(text: str) -> str:
    """The text inside the last ``[ANSWER]`` tag (to ``[/ANSWER]`` or the end), else all of it."""
    if "[ANSWER]" in text:
        text = text.rsplit("[ANSWER]", 1)[1]
    return text.split("[/ANSWER]", 1)[0]


def last_assertion(text: str) -> ast.Assert | None:
    """The last ``assert <call> == <value>`` statement in ``text``, parsed; None if none parses."""
    start = text.rfind("assert")
    if start < 0:
        return None
    candidate = text[start:].strip()
    if len(candidate) > MAX_ANSWER_CHARS:
        return None
    for source in (candidate, candidate.split("\n", 1)[0]):
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        if tree.body and isinstance(tree.body[0], ast.Assert):
            node = tree.body[0]
            test = node.test
            if (
                isinstance(test, ast.Compare)
                and len(test.ops) == 1
                and isinstance(test.ops[0], ast.Eq)
            ):
                node.source = source  # type: ignore[attr-defined]
                return node
    return None


@tasks.register("cruxeval")
class CRUXEvalTask(CodeTask):
    """CRUXEval's 800 functions: predict the output (or an input), checked by execution.

    Args:
        path: ``cruxeval.jsonl`` or its directory; None loads ``cruxeval-org/cruxeval``
            from the Hugging Face Hub (needs ``datasets``).
        mode: ``"output"`` (CRUXEval-O) or ``"input"`` (CRUXEval-I).
        template: ``"cot"`` (reason, then the assertion) or ``"direct"`` (the prompt opens
            the assertion and the model completes it).
        shots: solved examples (other functions of the same file) before each problem.
        half: 0 or 1 keeps the records at even or odd positions of the file, two disjoint
            halves (``fixable real select`` measures on half 0, a study probes half 1);
            exemplars then come from the same half. None (default): all of them.
        timeout_s, workers, sandbox: see :class:`~fixable.tasks.humaneval.CodeTask`.
    """

    name = "cruxeval"
    splits = ("test",)
    no_answer_reason = "no [ANSWER] assertion found in the completion"

    def __init__(
        self,
        path: str | Path | None = None,
        mode: str = "output",
        template: str = "cot",
        shots: int = 0,
        timeout_s: float = 10.0,
        workers: int | None = None,
        sandbox: Sandbox | None = None,
        half: int | None = None,
    ):
        check_choice("cruxeval", "mode", mode, ("output", "input"))
        take_half("cruxeval", [], half)  # validate now
        self.half = half
        check_choice("cruxeval", "template", template, ("cot", "direct"))
        if not isinstance(shots, int) or not 0 <= shots <= 8:
            raise ConfigError(f"cruxeval shots must be an integer in [0, 8], got {shots!r}")
        super().__init__(timeout_s, workers, sandbox)
        self.path, self.mode, self.template, self.shots = path, mode, template, shots
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        if self._records is None:
            if self.path is None:
                self._records = load_hf("cruxeval-org/cruxeval", "test")
            else:
                self._records = read_jsonl(resolve_file(self.path, ("cruxeval.jsonl",), "CRUXEval"))
        return self._records

    def _question(self, record: Record) -> str:
        code = record.get("code").rstrip()
        if self.mode == "output":
            return f"```python\n{code}\nassert f({record.get('input')}) == ??\n```\n"
        return f"```python\n{code}\nassert f(??) == {record.get('output')}\n```\n"

    @staticmethod
    def _assertion(record: Record) -> str:
        return f"assert f({record.get('input')}) == {record.get('output')}"

    def prompt(self, record: Record, exemplars: list[Record]) -> str:
        head = INSTRUCTIONS[self.mode].format(how=HOW[self.template])
        shots = "".join(
            f"{self._question(r)}[ANSWER]\n{self._assertion(r)}\n[/ANSWER]\n\n" for r in exemplars
        )
        text = head + shots + self._question(record)
        if self.template == "direct":
            text += "[ANSWER]\n" + self._opening(record)
        return text

    def _opening(self, record: Record) -> str:
        """Where a direct-template prompt stops: the model writes the rest of the assertion."""
        return f"assert f({record.get('input')}) == " if self.mode == "output" else "assert f("

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        check_choice("cruxeval", "split", split, self.splits)
        records = take_half("cruxeval", self.records(), self.half)
        out = []
        for record in select(records, n, seed):
            # Exemplars depend on the problem only through "never itself", so prompts are
            # reproducible from (seed, problem) whatever subset is drawn.
            exemplars = (
                list(iter_shots(records, self.shots, seed, exclude=record)) if self.shots else []
            )
            out.append(
                Problem(
                    id=f"cruxeval/{self.mode}/{record.get('id')}",
                    prompt=self.prompt(record, exemplars),
                    answer=record.get(self.mode),
                    task=self.name,
                    meta={
                        "mode": self.mode,
                        "code": record.get("code"),
                        "input": record.get("input"),
                        "output": record.get("output"),
                        "sample_id": record.get("id"),
                    },
                )
            )
        return out

    def extract(self, text: str) -> str | None:
        region = answer_region(text)
        if self.template == "direct":
            # The prompt opened the assertion; a placeholder call keeps it parseable.
            region = ("assert f() == " if self.mode == "output" else "assert f(") + region
        node = last_assertion(region)
        if node is None:
            return None
        source = node.source  # type: ignore[attr-defined]
        left, right = node.test.left, node.test.comparators[0]  # type: ignore[attr-defined]
        if self.mode == "output":
            return ast.get_source_segment(source, right)
        if not (
            isinstance(left, ast.Call) and isinstance(left.func, ast.Name) and left.func.id == "f"
        ):
            return None
        call = ast.get_source_segment(source, left) or ""
        return call[call.index("(") + 1 : call.rindex(")")].strip()

    def program(self, answer: str, problem: Problem) -> Program:
        meta = problem.meta
        if self.mode == "output":
            short = meta["input"] if len(meta["input"]) <= 60 else meta["input"][:57] + "..."
            message = f"f({short}) does not return the prediction"
            test = OUTPUT_TEST.format(prediction=answer, input=meta["input"], message=message)
        else:
            test = INPUT_TEST.format(prediction=answer, output=meta["output"])
        return Program(code="", setup=meta["code"], test=test)

    @property
    def stop(self) -> tuple[str, ...]:
        return ("[/ANSWER]",)

    def solution(self, problem: Problem) -> str:
        """The gold answer written as a completion of this task's prompt."""
        meta = problem.meta
        if self.template == "direct":
            return (
                problem.answer
                if self.mode == "output"
                else f"{problem.answer}) == {meta['output']}"
            ) + "\n"
        return f"[ANSWER]\nassert f({meta['input']}) == {meta['output']}\n[/ANSWER]"
