"""gpqa on synthetic records of GPQA's CSV shape: shuffled choices, recorded seed, exact letters."""

from __future__ import annotations

import csv
from collections import Counter

import pytest

from fixable.errors import DataError
from fixable.tasks import get_task
from fixable.tasks.gpqa import COLUMNS, extract_choice

HEADER = ["Record ID", *COLUMNS, "Explanation", "Subdomain"]


def write_gpqa_csv(path, n=40):
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for i in range(n):
            writer.writerow(
                [
                    f"rec{i:03d}",
                    f"Synthetic question {i}: which option is right?\nSecond line.",
                    f"right answer {i} ",  # GPQA cells carry stray whitespace
                    f"wrong answer {i}a",
                    f"wrong answer {i}b",
                    f"wrong answer {i}c",
                    f"Because option {i} is right.",
                    "Synthetic",
                ]
            )
    return path


@pytest.fixture
def gpqa_file(tmp_path):
    return write_gpqa_csv(tmp_path / "gpqa_synthetic.csv")


def test_gold_letter_points_at_the_correct_answer(gpqa_file):
    task = get_task("gpqa", path=gpqa_file)
    problems = task.problems()
    assert len(problems) == 40
    for p in problems:
        number = p.id.removeprefix("gpqa/rec").lstrip("0") or "0"
        assert f"({p.answer}) right answer {int(number)}\n" in p.prompt
        assert p.meta["choices"][p.meta["choice_order"].index(0)] == f"right answer {int(number)}"
        assert task.verify(f"Reasoning... The answer is ({p.answer}).", p).correct
        wrong = "ABCD"[("ABCD".index(p.answer) + 1) % 4]
        assert task.verify(f"The answer is ({wrong})", p).status == "failed"
        assert task.verify("I cannot decide.", p).status == "no_answer"
    # The shuffle spreads the correct option over all four positions.
    assert set(Counter(p.answer for p in problems)) == set("ABCD")


def test_shuffle_is_recorded_reproducible_and_independent_of_the_draw(gpqa_file):
    task = get_task("gpqa", path=gpqa_file)
    everything = {p.id: p for p in task.problems()}
    drawn = task.problems(7, seed=5)
    assert all(
        p.meta == everything[p.id].meta and p.answer == everything[p.id].answer for p in drawn
    )
    assert all(p.meta["choice_seed"] == 0 for p in drawn)
    reseeded = get_task("gpqa", path=gpqa_file, choice_seed=1).problems()
    assert any(p.meta["choice_order"] != everything[p.id].meta["choice_order"] for p in reseeded)
    assert all(p.meta["choice_seed"] == 1 for p in reseeded)


def test_templates_and_shots(gpqa_file):
    direct = get_task("gpqa", path=gpqa_file, template="direct")
    p = direct.problems(1)[0]
    assert p.prompt.endswith("The answer is (")
    assert direct.verify(f"{p.answer}).", p).correct
    shots = get_task("gpqa", path=gpqa_file, shots=3).problems(4, seed=2)
    for q in shots:
        assert q.prompt.count("Question:") == 4 and q.prompt.count("Because option") == 3
        own = q.prompt.rsplit("Question:", 1)[1]
        assert (
            own.split("\n")[0] not in q.prompt.rsplit("Question:", 1)[0]
        )  # never its own exemplar


@pytest.mark.parametrize(
    "text, letter",
    [
        ("The answer is (B).", "B"),
        ("so the answer is a bit unclear. Answer: C", "C"),
        ("\\boxed{D}", "D"),
        ("I think\n(A)", "A"),
        ("the answer is ambiguous", None),
        ("Option (B) looks wrong; the answer is (C)", "C"),
    ],
)
def test_extract_choice(text, letter):
    assert extract_choice(text) == letter


def test_malformed_csv_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2\nq,a,b,c\n")
    with pytest.raises(DataError, match=r"broken\.csv:1: missing column 'Incorrect Answer 3'"):
        get_task("gpqa", path=path).problems()
    header = ",".join(COLUMNS)
    path.write_text(f"{header}\nq,a,b,c,d\n,a,b,c,d\n")
    with pytest.raises(DataError, match=r"broken\.csv:3: field 'Question' is empty"):
        get_task("gpqa", path=path).problems()
