"""humaneval: all canonical solutions pass in the sandbox; wrong and hostile completions fail."""

from __future__ import annotations

import pytest

from fixable.sandbox import Sandbox
from fixable.tasks import get_task


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as box:
        yield box


@pytest.fixture
def tasks(shared_data, sandbox):
    path = shared_data / "humaneval"
    return (
        get_task("humaneval", path=path, template="completion", sandbox=sandbox),
        get_task("humaneval", path=path, sandbox=sandbox),
    )


def test_all_164_canonical_solutions_pass_as_completions_and_as_code_blocks(tasks):
    completion, cot = tasks
    problems = completion.problems()
    assert len(problems) == 164
    verdicts = completion.verify_many([p.answer for p in problems], problems)
    assert [
        (p.id, v.status, v.reason) for p, v in zip(problems, verdicts, strict=True) if not v.correct
    ] == []
    assert all(
        v.status == "passed" and v.answer == p.answer
        for p, v in zip(problems, verdicts, strict=True)
    )
    blocks = [
        f"Let me think it through.\n```python\n{p.meta['code_prompt']}{p.answer}```\nDone."
        for p in cot.problems()
    ]
    verdicts = cot.verify_many(blocks, cot.problems())
    assert [(v.status, v.reason) for v in verdicts if not v.correct] == []


def test_wrong_bodies_fail_with_a_reason(tasks):
    completion, _ = tasks
    problems = completion.problems()
    verdicts = completion.verify_many(["    return None\n"] * len(problems), problems)
    assert not any(v.correct for v in verdicts)
    assert all(v.status == "failed" and v.reason for v in verdicts)
    assert any("AssertionError" in v.reason for v in verdicts)


def test_extraction(tasks):
    completion, cot = tasks
    p = cot.problems(1)[0]
    assert cot.verify("I would need more time.", p).status == "no_answer"
    two_blocks = (
        f"```python\nprint('scratch')\n```\nFinal:\n```python\n{p.meta['code_prompt']}{p.answer}```"
    )
    assert cot.verify(two_blocks, p).correct
    unclosed = f"```python\n{p.meta['code_prompt']}{p.answer}"
    assert cot.verify(unclosed, p).correct
    q = completion.problems(1)[0]
    assert completion.verify(
        q.answer + "\ndef unrelated():\n    pass\n", q
    ).correct  # cut at "\ndef "
    assert completion.verify("   \n", q).status == "no_answer"


def test_a_candidate_cannot_redefine_the_tests_helper(tasks, shared_data):
    completion, _ = tasks
    find_zero = next(p for p in completion.problems() if p.meta["task_id"] == "HumanEval/32")
    assert "poly(" in find_zero.meta["test"]  # its test calls the prompt's helper
    cheat = "    return 0.0\n\n\ndef poly(xs, x):\n    return 0.0\n"
    verdict = completion.verify(cheat, find_zero)
    assert not verdict.correct and verdict.status == "failed"


def test_exit_before_tests_and_infinite_loops(tasks, shared_data):
    completion, _ = tasks
    p = completion.problems(1)[0]
    assert (
        completion.verify("    import os\n    os._exit(0)\nimport sys\nsys.exit(0)\n", p).status
        == "failed"
    )
    slow = get_task(
        "humaneval", path=shared_data / "humaneval", template="completion", timeout_s=1.0
    )
    try:
        verdict = slow.verify("    while True:\n        pass\n", slow.problems(1)[0])
    finally:
        slow.close()
    assert verdict.status == "timeout" and "limit" in verdict.reason
