"""The task interface: problems, answer extraction and verification."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

from fixable.types import Problem, Verdict


class Task(ABC):
    """A set of problems and the verifier that decides what counts as solved.

    Subclasses implement ``problems``, ``extract`` and ``check``; ``verify`` combines the
    two for one completion and may be overridden by tasks that run code or check more than
    the final answer.
    """

    name: str = ""

    @abstractmethod
    def problems(
        self, n: int | None = None, *, seed: int = 0, split: str = "test"
    ) -> list[Problem]:
        """Up to ``n`` problems (all when None) of ``split``, deterministic in ``seed``."""

    @abstractmethod
    def extract(self, text: str) -> str | None:
        """The final answer written in ``text``, or None when there is none."""

    @abstractmethod
    def check(self, answer: str, problem: Problem) -> bool:
        """Whether an extracted ``answer`` solves ``problem``."""

    def verify(self, text: str, problem: Problem) -> Verdict:
        answer = self.extract(text)
        if answer is None:
            return Verdict(None, False, "no_answer", "no final answer found")
        ok = self.check(answer, problem)
        return Verdict(answer, ok, "passed" if ok else "failed", "" if ok else "wrong answer")

    def verify_many(self, texts: Sequence[str], problems: Sequence[Problem]) -> list[Verdict]:
        """Verify many completions; tasks that execute code override this to run them in parallel."""
        return [self.verify(t, p) for t, p in zip(texts, problems, strict=True)]

    @property
    def stop(self) -> tuple[str, ...]:
        """Strings that end a completion for this task (besides the model's end token)."""
        return ()
