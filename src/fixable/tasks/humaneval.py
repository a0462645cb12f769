"""``humaneval``: complete a Python function; it counts only if the task's tests pass in the sandbox.

Data: ``HumanEval.jsonl.gz`` of openai/human-eval (``{"task_id", "prompt", "entry_point",
"canonical_solution", "test"}``) from ``path`` (the file or its directory), or
``openai/openai_humaneval`` from the Hugging Face Hub when no path is given.

Templates: ``"cot"`` (default) asks the model to reason, then write the whole function in
a fenced code block; ``"completion"`` is the classic setting where the model continues
the prompt (the function body) and stops at a new top-level statement.

Extraction: the last fenced code block that defines a function (else the last block);
under ``"completion"`` without a fence, the text up to the first stop sequence.

Verification runs, in :mod:`fixable.sandbox`, the prompt followed by the candidate (a
whole function replaces the prompt's stub; a body continues it), then the task's
``check(entry_point)``. The test's own helpers (e.g. ``poly`` of HumanEval/32) come from
the prompt alone, so a candidate cannot redefine them to pass.

:class:`CodeTask` is the shared base of code-executing tasks (also ``cruxeval``): it owns a
sandbox and overrides ``verify_many`` to run executions in parallel.
"""

from __future__ import annotations

import re
import threading
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path

from fixable.errors import ConfigError
from fixable.registry import tasks
from fixable.sandbox import ExecutionResult, Limits, Program, Sandbox
from fixable.tasks.base import Task
from fixable.tasks.loading import (
    Record,
    check_choice,
    load_hf,
    read_jsonl,
    resolve_file,
    select,
)
from fixable.types import Problem, Verdict

COMPLETION_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
INSTRUCTION = (
    "Complete the Python function below. Think through what it must do step by step, then "
    "write the whole function, signature included, in a single ```python code block.\n\n"
)


class CodeTask(Task):
    """A task whose verifier executes code in a :class:`~fixable.sandbox.Sandbox`.

    Args:
        timeout_s: wall-clock limit of one execution (CPU limit: the same, rounded up).
        workers: executions run in parallel (default: CPU count).
        sandbox: a sandbox to share with other tasks; by default the task starts its own
            on first use and stops it in :meth:`close` (or at exit).
    """

    def __init__(
        self, timeout_s: float = 10.0, workers: int | None = None, sandbox: Sandbox | None = None
    ):
        self.limits = Limits(timeout_s=timeout_s)
        self.workers = workers
        self._sandbox = sandbox
        self._owns_sandbox = sandbox is None
        self._sandbox_lock = threading.Lock()  # verifiers may be called from several threads

    @property
    def sandbox(self) -> Sandbox:
        with self._sandbox_lock:
            if self._sandbox is None:
                self._sandbox = Sandbox(workers=self.workers, limits=self.limits)
            return self._sandbox

    @abstractmethod
    def program(self, answer: str, problem: Problem) -> Program:
        """The execution that decides whether ``answer`` solves ``problem``."""

    def check(self, answer: str, problem: Problem) -> bool:
        return self.sandbox.run(self.program(answer, problem), self.limits).passed

    def verify(self, text: str, problem: Problem) -> Verdict:
        return self.verify_many([text], [problem])[0]

    def verify_many(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[Verdict]:
        """Extract every answer, then run all executions in parallel in the sandbox."""
        if len(texts) != len(problems):
            raise ConfigError(f"verify_many got {len(texts)} texts for {len(problems)} problems")
        answers = [self.extract(t) for t in texts]
        runnable = [i for i, a in enumerate(answers) if a is not None]
        programs = [self.program(answers[i], problems[i]) for i in runnable]
        results = dict(zip(runnable, self.sandbox.run_many(programs, self.limits), strict=True))
        verdicts = []
        for i, answer in enumerate(answers):
            if answer is None:
                verdicts.append(Verdict(None, False, "no_answer", self.no_answer_reason))
            else:
                verdicts.append(self.verdict(answer, results[i]))
        return verdicts

    no_answer_reason = "no code found in the completion"

    @staticmethod
    def verdict(answer: str, result: ExecutionResult) -> Verdict:
        extra = {"duration_s": result.duration_s, "output": result.output[-1000:]}
        return Verdict(answer, result.passed, result.status, result.reason, extra)

    def close(self) -> None:
        """Stop the task's own sandbox workers (a shared sandbox is left to its owner)."""
        if self._owns_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def code_blocks(text: str) -> list[str]:
    """Contents of the fenced code blocks of ``text`` (a last unclosed fence runs to the end)."""
    return [m.group(1) for m in _FENCE.finditer(text)]


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def defines(code: str, function: str) -> bool:
    return re.search(rf"^def\s+{re.escape(function)}\s*\(", code, re.MULTILINE) is not None


@tasks.register("humaneval")
class HumanEvalTask(CodeTask):
    """HumanEval's 164 function-completion problems, verified by their unit tests.

    Args:
        path: ``HumanEval.jsonl.gz`` (or ``.jsonl``) or its directory; None loads
            ``openai/openai_humaneval`` from the Hugging Face Hub (needs ``datasets``).
        template: ``"cot"`` (reason, then the whole function in a code block) or
            ``"completion"`` (continue the prompt).
        timeout_s, workers, sandbox: see :class:`CodeTask`.
    """

    name = "humaneval"
    splits = ("test",)

    def __init__(
        self,
        path: str | Path | None = None,
        template: str = "cot",
        timeout_s: float = 10.0,
        workers: int | None = None,
        sandbox: Sandbox | None = None,
    ):
        check_choice("humaneval", "template", template, ("cot", "completion"))
        super().__init__(timeout_s, workers, sandbox)
        self.path, self.template = path, template
        self._records: list[Record] | None = None

    def records(self) -> list[Record]:
        if self._records is None:
            if self.path is None:
                self._records = load_hf("openai/openai_humaneval", "test")
            else:
                names = ("HumanEval.jsonl.gz", "HumanEval.jsonl")
                self._records = read_jsonl(resolve_file(self.path, names, "HumanEval"))
        return self._records

    def prompt(self, code_prompt: str) -> str:
        if self.template == "completion":
            return code_prompt
        return f"{INSTRUCTION}```python\n{code_prompt.rstrip()}\n```\n"

    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        check_choice("humaneval", "split", split, self.splits)
        out = []
        for record in select(self.records(), n, seed):
            task_id = record.get("task_id")
            out.append(
                Problem(
                    id=f"humaneval/{task_id.rsplit('/', 1)[-1]}",
                    prompt=self.prompt(record.get("prompt")),
                    answer=record.get("canonical_solution"),
                    task=self.name,
                    meta={
                        "task_id": task_id,
                        "code_prompt": record.get("prompt"),
                        "entry_point": record.get("entry_point"),
                        "test": record.get("test"),
                    },
                )
            )
        return out

    def extract(self, text: str) -> str | None:
        blocks = code_blocks(text)
        if blocks:
            with_function = [b for b in blocks if re.search(r"^\s*def\s", b, re.MULTILINE)]
            code = (with_function or blocks)[-1]
        elif self.template == "completion":
            code = cut_at_stop(text, COMPLETION_STOP)
        else:
            return None
        return code if code.strip() else None

    def program(self, answer: str, problem: Problem) -> Program:
        prompt, entry_point = problem.meta["code_prompt"], problem.meta["entry_point"]
        # A whole function replaces the prompt's docstring-only stub; a body continues it.
        code = f"{prompt}\n{answer}" if defines(answer, entry_point) else prompt + answer
        return Program(
            code=code,
            setup=prompt,
            test=f"{problem.meta['test']}\ncheck({entry_point})\n",
            expose=(entry_point,),
        )

    @property
    def stop(self) -> tuple[str, ...]:
        return COMPLETION_STOP if self.template == "completion" else ()

    @staticmethod
    def solution(problem: Problem) -> str:
        """The canonical solution as a completion of the prompt."""
        return problem.answer
