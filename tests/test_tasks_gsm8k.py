"""gsm8k: every gold answer verifies, perturbed ones do not, formatting is tolerated."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fixable.errors import ConfigError, DataError, UnknownNameError
from fixable.tasks import get_task
from fixable.tasks.gsm8k import canonical_number, extract_number, numbers_equal, worked_solution


@pytest.fixture
def gsm8k_dir(shared_data):
    return shared_data / "gsm8k"


def with_commas(number: str) -> str:
    return f"{int(number):,}"


def test_all_1319_gold_answers_verify_and_perturbed_do_not(gsm8k_dir):
    task = get_task("gsm8k", path=gsm8k_dir)
    problems = task.problems()
    assert len(problems) == 1319 and len({p.id for p in problems}) == 1319
    for p in problems:
        reference = p.meta["solution"]
        assert task.verify(reference, p).correct, p.id
        assert task.verify(worked_solution(reference), p).correct, p.id
        assert task.verify(f"So she pays ${with_commas(p.answer)}.", p).correct, p.id
        wrong = task.verify(f"The answer is {int(p.answer) + 1}.", p)
        assert wrong.status == "failed" and not wrong.correct, p.id
    # The data README: 14 test answers are written with thousands separators.
    assert sum("," in p.meta["solution"].rsplit("####", 1)[1] for p in problems) == 14


@pytest.mark.parametrize(
    "text, number",
    [
        ("The answer is $1,234.", "1234"),
        ("so 5 apples in all. Answer: 7 eggs", "7"),
        ("#### -3", "-3"),
        ("The answer is −12 degrees.", "-12"),
        ("x = \\boxed{12}", "12"),
        ("It costs 18.00 dollars", "18"),
        ("The answer is 25%.", "25"),
        ("The answer is 0.5 hours", "0.5"),
        ("She walked 3 km, then 4 km. The answer is 7 km. Check: 3 + 4 = 7", "7"),
        ("First 10, then 20, so 30", "30"),
        ("I do not know", None),
    ],
)
def test_extraction_tolerates_how_people_write_numbers(text, number):
    assert extract_number(text) == number


def test_the_last_marker_wins_and_direct_template_reads_the_first_number(gsm8k_dir):
    assert extract_number("The answer is 5. Wait, no: the answer is 6.") == "6"
    direct = get_task("gsm8k", path=gsm8k_dir, template="direct")
    p = direct.problems(1)[0]
    assert p.prompt.endswith("The answer is")
    assert direct.verify(f" {p.answer}.\n\nSome more words 99", p).correct
    assert direct.verify(" unsure", p).status == "no_answer"


@settings(max_examples=300, deadline=None)
@given(
    gold=st.integers(min_value=-(10**9), max_value=10**12),
    other=st.integers(min_value=-(10**9), max_value=10**12),
    commas=st.booleans(),
    dollar=st.booleans(),
    unit=st.sampled_from(["", " dollars", " eggs", "%", " km", " minutes"]),
    period=st.booleans(),
    lead=st.sampled_from(
        ["The answer is ", "#### ", "Answer: ", "So the total is ", "The answer is: "]
    ),
    decimals=st.sampled_from(["", ".0", ".00"]),
)
def test_numeric_verifier_accepts_formatting_and_rejects_other_numbers(
    gold, other, commas, dollar, unit, period, lead, decimals
):
    def written(n: int) -> str:
        digits = f"{abs(n):,}" if commas else str(abs(n))
        sign = "-" if n < 0 else ""
        return f"{lead}{sign}{'$' if dollar else ''}{digits}{decimals}{unit}{'.' if period else ''}"

    gold_text = canonical_number(str(gold))
    extracted = extract_number(f"Some reasoning with 3 and 4.\n{written(gold)}")
    assert extracted is not None and numbers_equal(extracted, gold_text)
    extracted_other = extract_number(written(other))
    assert numbers_equal(extracted_other, gold_text) == (other == gold)


@settings(max_examples=200, deadline=None)
@given(
    st.decimals(min_value=-(10**6), max_value=10**6, places=3, allow_nan=False), st.integers(1, 999)
)
def test_decimals_must_match_exactly(value, bump):
    text = format(value, "f")
    assert numbers_equal(extract_number(f"The answer is {text}."), canonical_number(text))
    nudged = value + type(value)(bump) / 1000
    assert not numbers_equal(
        extract_number(f"The answer is {format(nudged, 'f')}."), canonical_number(text)
    )


def test_few_shot_prompts_use_train_and_are_deterministic(gsm8k_dir):
    task = get_task("gsm8k", path=gsm8k_dir, shots=3)
    a, b = task.problems(5, seed=7), task.problems(5, seed=7)
    assert a == b and [p.prompt for p in a] == [p.prompt for p in b]
    prompt = a[0].prompt
    assert (
        prompt.count("Question:") == 4 and prompt.count("The answer is") == 4
    )  # 3 shots + instruction
    assert "<<" not in prompt  # calculator annotations are stripped from exemplars
    assert a != task.problems(5, seed=8)
    train = get_task("gsm8k", path=gsm8k_dir, shots=2).problems(split="train")
    assert len(train) == 7473 - 2  # exemplars are never also problems


def test_selection_and_splits(gsm8k_dir):
    task = get_task("gsm8k", path=gsm8k_dir)
    some = task.problems(10, seed=3)
    assert len(some) == 10 and some == task.problems(10, seed=3)
    assert [int(p.id.rsplit("/", 1)[1]) for p in some] == sorted(
        int(p.id.rsplit("/", 1)[1]) for p in some
    )
    assert len(task.problems(split="train")) == 7473
    with pytest.raises(ConfigError, match="gsm8k split must be one of"):
        task.problems(split="validation")
    with pytest.raises(ConfigError, match="gsm8k template"):
        get_task("gsm8k", path=gsm8k_dir, template="fancy")
    with pytest.raises(UnknownNameError, match="Did you mean: gsm8k"):
        get_task("gsm8kk")


def test_malformed_files_name_file_line_and_field(tmp_path):
    good = {"question": "1+1?", "answer": "1+1=2\n#### 2"}
    bad_json = tmp_path / "test.jsonl"
    bad_json.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: not valid JSON"):
        get_task("gsm8k", path=tmp_path).problems()
    bad_json.write_text(json.dumps(good) + "\n" + json.dumps({"question": "x"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:2: missing field 'answer'"):
        get_task("gsm8k", path=tmp_path).problems()
    bad_json.write_text(json.dumps({"question": "x", "answer": "no marker"}) + "\n")
    with pytest.raises(DataError, match=r"test\.jsonl:1: field 'answer' has no '#### <number>'"):
        get_task("gsm8k", path=tmp_path).problems()
    with pytest.raises(DataError, match="no gsm8k train file"):
        get_task("gsm8k", path=tmp_path).problems(split="train")


def test_steps_and_halves_slice_the_test_split(gsm8k_dir):
    from fixable.tasks.gsm8k import solution_steps

    assert solution_steps("a=<<1+1=2>>2\n\nb\n#### 2") == 2
    whole = get_task("gsm8k", path=gsm8k_dir, steps=[2, 3]).problems()
    assert {solution_steps(p.meta["solution"]) for p in whole} == {2, 3}
    assert len(whole) == 326 + 371  # the test split's 2- and 3-step problems
    halves = [get_task("gsm8k", path=gsm8k_dir, steps=[2, 3], half=h).problems() for h in (0, 1)]
    ids = [{p.id for p in half} for half in halves]
    assert not ids[0] & ids[1] and ids[0] | ids[1] == {p.id for p in whole}
    assert abs(len(ids[0]) - len(ids[1])) <= 1
    assert get_task("gsm8k", path=gsm8k_dir, steps=4).problems(5, seed=1)[0].meta["solution"]
    for bad in ({"steps": 0}, {"steps": []}, {"steps": "2"}, {"half": 2}, {"half": True}):
        with pytest.raises(ConfigError, match="steps|half"):
            get_task("gsm8k", path=gsm8k_dir, **bad)
