"""math500: every gold answer verifies through math-verify; perturbed answers do not."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixable.errors import ConfigError
from fixable.tasks import get_task
from fixable.tasks.math500 import equivalent, last_boxed


@pytest.fixture
def task(shared_data):
    return get_task("math500", path=shared_data / "math500")


def test_all_500_gold_answers_verify(task):
    problems = task.problems()
    assert len(problems) == 500 and len({p.id for p in problems}) == 500
    for p in problems:
        assert task.verify(p.meta["solution"], p).correct, p.id  # the worked solution's last box
        boxed = task.verify(f"Therefore the answer is $\\boxed{{{p.answer}}}$.", p)
        assert boxed.correct and boxed.status == "passed", p.id
        # A different string with the same value: decided by math-verify, not string equality.
        assert equivalent("\\displaystyle " + p.answer, p.answer), p.id


def test_perturbed_numeric_gold_answers_are_rejected(task):
    checked = 0
    for p in task.problems():
        if re.fullmatch(r"-?\d+", p.answer):
            wrong = str(int(p.answer) + 1)
        elif m := re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", p.answer):
            wrong = f"\\frac{{{int(m.group(1)) + 1}}}{{{m.group(2)}}}"
        else:
            continue
        verdict = task.verify(f"\\boxed{{{wrong}}}", p)
        assert verdict.status == "failed" and not verdict.correct, (p.id, p.answer, wrong)
        checked += 1
    assert checked > 250  # most MATH-500 answers are integers or simple fractions


@pytest.mark.parametrize(
    "text, inner",
    [
        ("so $\\boxed{5}$", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\fbox{x^{2}}", "x^{2}"),
        ("the answer is \\boxed 7$ done", "7"),
        ("\\boxed{unclosed", None),
        ("no box here: 42", None),
    ],
)
def test_last_boxed(text, inner):
    assert last_boxed(text) == inner


def test_templates_and_no_answer(task, shared_data):
    p = task.problems(1)[0]
    assert p.prompt.startswith("Solve the following math problem") and "\\boxed{}" in p.prompt
    assert task.verify("I think it is 42.", p).status == "no_answer"
    direct = get_task("math500", path=shared_data / "math500", template="direct")
    q = direct.problems(1)[0]
    assert q.prompt.endswith("\\boxed{")
    assert direct.verify(q.answer + "}$.", q).correct
    with pytest.raises(ConfigError, match="shots_path"):
        get_task("math500", path=shared_data / "math500", shots=2)


def test_few_shot_from_a_file_of_worked_problems(shared_data, tmp_path):
    worked = tmp_path / "train.jsonl"
    worked.write_text(
        '{"problem": "What is 1+1?", "solution": "It is $\\\\boxed{2}$."}\n'
        '{"problem": "What is 2+2?", "solution": "It is $\\\\boxed{4}$."}\n'
    )
    task = get_task("math500", path=shared_data / "math500", shots=2, shots_path=worked)
    prompt = task.problems(1)[0].prompt
    assert prompt.count("Problem:") == 3 and "What is 1+1?" in prompt and "What is 2+2?" in prompt


def latex_fraction(value: Fraction) -> str:
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


@settings(max_examples=60, deadline=None)
@given(
    st.fractions(min_value=-50, max_value=50, max_denominator=30),
    st.integers(2, 9),
    st.integers(1, 40),
)
def test_fractions_equal_in_any_form_and_differ_when_perturbed(value, scale, bump):
    gold = latex_fraction(value)
    unreduced = f"{'-' if value < 0 else ''}\\dfrac{{{abs(value.numerator) * scale}}}{{{value.denominator * scale}}}"
    assert equivalent(unreduced, gold)
    assert equivalent(f"{value.numerator}/{value.denominator}", gold)
    assert not equivalent(latex_fraction(value + Fraction(bump, 41)), gold)


@settings(max_examples=40, deadline=None)
@given(st.integers(-9, 9), st.integers(-9, 9), st.integers(1, 5))
def test_polynomials_equal_when_factored_and_differ_when_a_coefficient_moves(a, b, bump):
    def term(k: int) -> str:
        return f"+ {k}" if k >= 0 else f"- {-k}"

    factored = f"(x {term(a)})(x {term(b)})"
    expanded = f"x^2 {term(a + b)}x {term(a * b)}"
    assert equivalent(factored, expanded)
    assert not equivalent(factored, f"x^2 {term(a + b + bump)}x {term(a * b)}")


def test_levels_and_halves_slice_it(shared_data):
    path = shared_data / "math500"
    easy = get_task("math500", path=path, levels=[1, 2]).problems()
    assert len(easy) == 43 + 90 and {p.meta["level"] for p in easy} == {1, 2}
    halves = [get_task("math500", path=path, levels=[1, 2], half=h).problems() for h in (0, 1)]
    assert {p.id for p in halves[0]}.isdisjoint(p.id for p in halves[1])
    assert len(halves[0]) + len(halves[1]) == len(easy)
    assert {p.meta["level"] for p in get_task("math500", path=path, levels=1).problems()} == {1}
    with pytest.raises(ConfigError, match="levels must be an integer in \\[1, 5\\]"):
        get_task("math500", path=path, levels=[6])
