import random

import pytest

from fixable.errors import ConfigError
from fixable.tasks import get_task
from fixable.tasks.chains import DIFFICULTY_STEPS, apply_op, random_chain, split_of


def test_gold_solutions_verify_and_perturbations_fail():
    task = get_task("chains")
    for p in task.problems(60, seed=3):
        gold = task.solution(p)
        v = task.verify(gold, p)
        assert v.correct and v.extra["chain_correct"]
        wrong = gold[:-1] + str((int(gold[-1]) + 1) % 10)
        assert not task.verify(wrong, p).correct
        assert task.verify("garbage", p).status == "no_answer"


def test_generation_is_deterministic_and_splits_disjoint():
    task = get_task("chains")
    a = task.problems(40, seed=1)
    assert a == task.problems(40, seed=1)
    train = {p.prompt for p in task.problems(400, seed=1, split="train")}
    test = {p.prompt for p in task.problems(400, seed=1, split="test")}
    assert not train & test
    assert all(split_of(p) == "test" for p in test)


def test_difficulty_sets_steps_and_subdists_cycle():
    task = get_task("chains", subdists=["arith", "alien"], difficulties=[5])
    ps = task.problems(10)
    assert {p.meta["subdist"] for p in ps} == {"arith", "alien"}
    assert all(p.meta["n_steps"] == DIFFICULTY_STEPS[5] for p in ps)
    alien = [p for p in ps if p.meta["subdist"] == "alien"]
    assert all(" h" in p.prompt or "|h" in p.prompt for p in alien)


def test_ops_semantics():
    assert apply_op("4821", "a27") == "4891"
    assert apply_op("4821", "s13") == "4128"
    assert apply_op("4821", "m03") == "2821"
    assert apply_op("4821", "c03") == "4824"
    assert apply_op("4821", "x01") == "4221"
    assert apply_op("4821", "n12") == "4821"


def test_distractors_add_noop_steps():
    c = random_chain(random.Random(0), "arith", 4, distractors=2)
    assert len(c.ops) == 6 and sum(op[0] == "n" for op in c.ops) == 2


def test_bad_config_names_the_value():
    with pytest.raises(ConfigError, match="difficulty must be in"):
        get_task("chains", difficulties=[7])
    with pytest.raises(KeyError, match="Did you mean: chains"):
        get_task("chain")
