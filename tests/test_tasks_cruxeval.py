"""cruxeval: all gold outputs verify by execution; perturbed and non-literal predictions do not."""

from __future__ import annotations

import ast

import pytest

from fixable.errors import ConfigError
from fixable.sandbox import Sandbox
from fixable.tasks import get_task

# Gold inputs that are not Python literals (calls, lambdas, names defined by the code):
# by design they cannot be given as input predictions.
NON_LITERAL_GOLD_INPUTS = {
    "sample_152", "sample_239", "sample_258", "sample_344", "sample_364", "sample_378",
    "sample_459", "sample_522", "sample_694", "sample_720", "sample_760", "sample_770",
}  # fmt: skip


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2) as box:
        yield box


def task_for(shared_data, sandbox, **options):
    return get_task("cruxeval", path=shared_data / "cruxeval", sandbox=sandbox, **options)


def test_all_800_gold_outputs_verify_and_perturbed_outputs_do_not(shared_data, sandbox):
    task = task_for(shared_data, sandbox)
    problems = task.problems()
    assert len(problems) == 800
    verdicts = task.verify_many([task.solution(p) for p in problems], problems)
    assert [
        (p.id, v.status, v.reason) for p, v in zip(problems, verdicts, strict=True) if not v.correct
    ] == []
    # (gold, 0) is never equal to what f returns: the perturbation must fail everywhere.
    wrong = [f"[ANSWER]\nassert f(x) == ({p.answer}, 0)\n[/ANSWER]" for p in problems]
    verdicts = task.verify_many(wrong, problems)
    assert not any(v.correct for v in verdicts)
    assert all(v.status == "failed" for v in verdicts)


def test_direct_template_gold_outputs_verify(shared_data, sandbox):
    task = task_for(shared_data, sandbox, template="direct")
    problems = task.problems(100, seed=1)
    assert all(p.prompt.endswith(f"assert f({p.meta['input']}) == ") for p in problems)
    verdicts = task.verify_many([task.solution(p) for p in problems], problems)
    assert all(v.correct for v in verdicts)


def test_input_prediction_accepts_literal_gold_inputs(shared_data, sandbox):
    task = task_for(shared_data, sandbox, mode="input")
    problems = task.problems()
    verdicts = task.verify_many([task.solution(p) for p in problems], problems)
    rejected = {
        p.meta["sample_id"] for p, v in zip(problems, verdicts, strict=True) if not v.correct
    }
    assert rejected == NON_LITERAL_GOLD_INPUTS
    for p in problems:
        if p.meta["sample_id"] in rejected:
            with pytest.raises((ValueError, SyntaxError, TypeError)):
                ast.literal_eval(f"({p.meta['input']},)")


def test_another_valid_input_is_accepted(shared_data, sandbox):
    task = task_for(shared_data, sandbox, mode="input")
    p = next(p for p in task.problems() if p.meta["sample_id"] == "sample_0")
    # sample_0 counts each element: any permutation of the gold list gives the same output.
    shuffled = "[1, 1, 1, 1, 3, 3]"
    assert shuffled != p.answer
    assert task.verify(
        f"[ANSWER]\nassert f({shuffled}) == {p.meta['output']}\n[/ANSWER]", p
    ).correct
    assert not task.verify(
        f"[ANSWER]\nassert f([1, 3]) == {p.meta['output']}\n[/ANSWER]", p
    ).correct


def test_non_literal_predictions_are_rejected(shared_data, sandbox):
    task = task_for(shared_data, sandbox)
    p = task.problems(1)[0]
    call = f"[ANSWER]\nassert f({p.meta['input']}) == f({p.meta['input']})\n[/ANSWER]"
    verdict = task.verify(call, p)
    assert verdict.status == "failed" and "not a Python literal" in verdict.reason
    inputs = task_for(shared_data, sandbox, mode="input")
    q = inputs.problems(1)[0]
    sneaky = f"[ANSWER]\nassert f(__import__('os')._exit(0)) == {q.meta['output']}\n[/ANSWER]"
    assert inputs.verify(sneaky, q).status == "failed"


def test_extraction(shared_data, sandbox):
    task = task_for(shared_data, sandbox)
    text = "[ANSWER]\nassert f(1) == 'a'\n[/ANSWER] on reflection [ANSWER]\nassert f(1) == 'a == b'\n[/ANSWER]"
    assert task.extract(text) == "'a == b'"
    assert task.extract("thinking...\nassert f([1]) == [2, 3]  # done") == "[2, 3]"
    assert task.extract("The output is 5.") is None
    assert (
        task_for(shared_data, sandbox, mode="input").extract("[ANSWER]assert f(1, 'x') == 2")
        == "1, 'x'"
    )
    assert task.verify("no idea", task.problems(1)[0]).status == "no_answer"


def test_prompts_and_options(shared_data, sandbox):
    task = task_for(shared_data, sandbox, shots=2)
    problems = task.problems(5, seed=3)
    assert problems == task.problems(5, seed=3)
    for p in problems:
        assert p.prompt.count("[ANSWER]") == 3  # two solved examples and the instructions
        assert p.prompt.count("```python") == 3 and p.prompt.endswith("== ??\n```\n")
        assert p.id.startswith("cruxeval/output/sample_")
    with pytest.raises(ConfigError, match="cruxeval mode"):
        task_for(shared_data, sandbox, mode="both")


def test_halves_are_disjoint_and_their_exemplars_stay_inside(shared_data, sandbox):
    halves = [task_for(shared_data, sandbox, shots=2, half=h).problems() for h in (0, 1)]
    ids = [{p.id for p in half} for half in halves]
    assert len(ids[0]) == len(ids[1]) == 400 and not ids[0] & ids[1]
    # a half-0 prompt shows only half-0 functions as solved examples
    other = {p.meta["code"] for p in halves[1]}
    for p in halves[0][:50]:
        assert not any(code.rstrip() in p.prompt for code in other)
    with pytest.raises(ConfigError, match="half"):
        task_for(shared_data, sandbox, half=2)
