"""jsonl: a user's own file, named fields, each verifier; malformed files name file, line, field."""

from __future__ import annotations

import gzip
import json

import pytest

from fixable.errors import ConfigError, DataError
from fixable.tasks import get_task
from fixable.tasks.loading import read_jsonl, select


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_exact_verifier_with_named_fields(tmp_path):
    path = write_lines(
        tmp_path / "capitals.jsonl",
        [
            {"q": "Capital of France?", "a": "Paris", "key": "fr"},
            {"q": "Of Peru?", "a": "Lima", "key": "pe"},
        ],
    )
    task = get_task("jsonl", path=path, prompt_field="q", answer_field="a", id_field="key")
    fr, pe = task.problems()
    assert fr.id == "jsonl/capitals/test/fr" and fr.prompt.startswith("Capital of France?")
    assert "The answer is: <answer>" in fr.prompt
    assert task.verify("Thinking.\nThe answer is: Paris.", fr).correct
    assert task.verify("Lima", pe).correct  # last line when no marker
    assert task.verify("The answer is: Lyon", fr).status == "failed"
    plain = get_task("jsonl", path=path, prompt_field="q", answer_field="a", template="plain")
    assert plain.problems()[0].prompt == "Capital of France?"


def test_numeric_math_and_choice_verifiers(tmp_path):
    numeric = get_task(
        "jsonl",
        path=write_lines(tmp_path / "n.jsonl", [{"prompt": "2*600?", "answer": 1200}]),
        verifier="numeric",
    )
    p = numeric.problems()[0]
    assert p.answer == "1200" and numeric.verify("The answer is 1,200 dollars.", p).correct
    assert not numeric.verify("The answer is 1201.", p).correct
    math = get_task(
        "jsonl",
        path=write_lines(tmp_path / "m.jsonl", [{"prompt": "Half?", "answer": "\\frac{1}{2}"}]),
        verifier="math",
    )
    q = math.problems()[0]
    assert math.verify("so $\\boxed{0.5}$", q).correct and not math.verify("\\boxed{2}", q).correct
    choice = get_task(
        "jsonl",
        path=write_lines(tmp_path / "c.jsonl", [{"prompt": "Pick", "answer": "E"}]),
        verifier="choice",
    )
    r = choice.problems()[0]
    assert (
        choice.verify("The answer is (E)", r).correct and not choice.verify("Answer: A", r).correct
    )


def test_shots_and_split_directories(tmp_path):
    rows = [{"prompt": f"What is {i}+1?", "answer": str(i + 1)} for i in range(6)]
    write_lines(tmp_path / "test.jsonl", rows)
    write_lines(tmp_path / "train.jsonl", rows[:2])
    task = get_task("jsonl", path=tmp_path, verifier="numeric", shots=2)
    for p in task.problems():
        assert p.prompt.count("What is") == 3 and p.prompt.count("The answer is") == 3
        own = p.prompt.rsplit("\n\n", 2)[-2]
        assert p.prompt.count(own) == 1
    with pytest.raises(ConfigError, match="asked for 2 few-shot examples but only 1"):
        task.problems(split="train")  # two rows, minus the problem itself
    assert len(get_task("jsonl", path=tmp_path).problems(split="train")) == 2
    single = get_task("jsonl", path=tmp_path / "test.jsonl")
    with pytest.raises(ConfigError, match="is one file"):
        single.problems(split="train")


def test_malformed_files_name_file_line_and_field(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "c", "answer": \n')
    with pytest.raises(DataError, match=r"broken\.jsonl:3: not valid JSON"):
        get_task("jsonl", path=path).problems()
    write_lines(path, [{"prompt": "a", "answer": "b"}, {"prompt": "c"}])
    with pytest.raises(
        DataError, match=r"broken\.jsonl:2: missing field 'answer' \(fields present: prompt\)"
    ):
        get_task("jsonl", path=path).problems()
    write_lines(path, [{"prompt": "a", "answer": ["b"]}])
    with pytest.raises(
        DataError, match=r"broken\.jsonl:1: field 'answer' must be str or int or float, got list"
    ):
        get_task("jsonl", path=path).problems()
    write_lines(path, [{"prompt": "a", "answer": "seven"}])
    with pytest.raises(DataError, match=r"broken\.jsonl:1: field 'answer' is not a number"):
        get_task("jsonl", path=path, verifier="numeric").problems()
    write_lines(
        path, [{"prompt": "a", "answer": "1", "id": "x"}, {"prompt": "b", "answer": "2", "id": "x"}]
    )
    with pytest.raises(DataError, match=r"broken\.jsonl:2: field 'id' repeats id 'x'"):
        get_task("jsonl", path=path, id_field="id").problems()
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"broken\.jsonl:1: expected a JSON object, got list"):
        read_jsonl(path)
    with pytest.raises(ConfigError, match="jsonl needs path="):
        get_task("jsonl")
    with pytest.raises(ConfigError, match="jsonl verifier must be one of"):
        get_task("jsonl", path=path, verifier="fuzzy")


def test_gzipped_files_and_selection(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    with gzip.open(path, "wt") as f:
        for i in range(20):
            f.write(json.dumps({"prompt": f"p{i}", "answer": f"a{i}"}) + "\n")
    assert len(read_jsonl(path)) == 20
    task = get_task("jsonl", path=path)
    drawn = task.problems(5, seed=1)
    assert (
        len(drawn) == 5 and drawn == task.problems(5, seed=1) and drawn != task.problems(5, seed=2)
    )
    assert select(list(range(10)), None, 0) == list(range(10))
    assert select(list(range(10)), 3, 0) == sorted(select(list(range(10)), 3, 0))
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"broken\.jsonl\.gz: cannot read"):
        read_jsonl(broken)
