"""The GSM8K verifier at its edges, on a hand-written data file (no shared data needed):
trailing periods and spaces, \\boxed{} with more after it, values that are not numbers,
gold answers with '####' inside the reasoning, and the cot and direct templates end to end.
Every expected answer is written out by hand.
"""

from __future__ import annotations

import json

import pytest

from fixable.errors import DataError
from fixable.tasks import get_task
from fixable.tasks.gsm8k import canonical_number, extract_number, gold_of, numbers_equal


@pytest.mark.parametrize(
    "text, number",
    [
        ("1,450,000.", "1450000"),  # a trailing period is punctuation
        ("$ 12", "12"),
        (".5", "0.5"),
        ("18.50", "18.5"),
        ("1e3", "1000"),
        ("-0", "0"),
        ("12..", "12"),
        ("1 000", "1000"),
        ("abc", None),
        ("12X", None),  # only dots are stripped from the end
        ("0.0000001", "0.0000001"),  # written out, never 1E-7
        ("Infinity", None),
    ],
)
def test_canonical_numbers(text, number):
    assert canonical_number(text) == number


@pytest.mark.parametrize(
    "text, number",
    [
        ("\\boxed{12} and then 13", "12"),  # the box's content, not what follows
        ("\\BOXED{7} 8", "7"),  # markers are case-insensitive
        ("\\boxed{3} \\boxed{4} 5", "4"),  # the last marker wins
        ("\\boxed{} 9", "9"),  # an empty box holds no answer: the last number written
        ("\\boxed{6} and \\boxed{x} 1", "6"),  # a marker without a number: the one before
        ("The answer is 5. \\boxed{x} 13", "5"),  # the box ends at its brace
        ("\\boxed{x 7} 13", "7"),  # not at its first space
        ("The answer is 5. \\boxed{x} 13 }", "5"),  # at its first closing brace
        ("The answer is: 42", "42"),
        ("Final answer: 3.25 kg", "3.25"),
    ],
)
def test_extraction_at_markers(text, number):
    assert extract_number(text) == number


def test_numbers_that_are_not_numbers_are_not_equal():
    assert numbers_equal("18.00", "18") and not numbers_equal("18.5", "18")
    assert not numbers_equal("abc", "abc")  # not a number: never equal, even to itself
    assert not numbers_equal("", "0")


def test_gold_is_the_number_after_the_last_marker():
    assert gold_of("She has 3 #### apples? no.\nSo 4 + 1 = 5\n#### 5") == "5"
    assert gold_of("x\n####  1,234 ") == "1234"
    assert gold_of("x\n#### 1 234") == "1234"
    with pytest.raises(DataError) as caught:
        gold_of("no marker here")
    assert str(caught.value) == ": field 'answer' has no '#### <number>' line"
    with pytest.raises(DataError) as caught:
        gold_of("no marker here", "test.jsonl:3")
    assert str(caught.value) == "test.jsonl:3: field 'answer' has no '#### <number>' line"
    with pytest.raises(DataError) as caught:
        gold_of("#### 5\n#### many", "test.jsonl:4")
    assert str(caught.value) == "test.jsonl:4: field 'answer' ends in a non-number after '####'"


@pytest.fixture
def data_dir(tmp_path):
    records = [
        {"question": "Ann has 3 apples and buys 4. How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "A toy costs $1,200. Two cost?", "answer": "2 * 1200 = 2400\n#### 2,400"},
    ]  # fmt: skip
    (tmp_path / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return tmp_path


def test_cot_template_verifies_end_to_end(data_dir):
    task = get_task("gsm8k", path=data_dir)
    apples, toys = task.problems()
    assert (apples.answer, toys.answer) == ("7", "2400")
    assert task.extract("3 + 4 = 7. The answer is 7.") == "7"
    assert task.check("7", apples) and not task.check("8", apples)
    assert task.check("2400.00", toys)
    assert task.verify("So $2,400 in all. The answer is $2,400.", toys).correct
    wrong = task.verify("The answer is 2399.", toys)
    assert (wrong.status, wrong.correct) == ("failed", False)
    assert task.verify("I cannot tell.", apples).status == "no_answer"


def test_direct_template_reads_the_number_right_after_the_prompt(data_dir):
    task = get_task("gsm8k", path=data_dir, template="direct")
    apples = task.problems()[0]
    assert apples.prompt.endswith("Answer: The answer is")
    assert task.extract(" 7.\n\nQuestion: 12") == "7"  # not the last number of the text
    assert task.verify(" 7.\n\nQuestion: 12", apples).correct
    cot = get_task("gsm8k", path=data_dir)
    assert cot.extract(" 7.\n\nQuestion: 12") == "12"  # the cot template has no implied marker
