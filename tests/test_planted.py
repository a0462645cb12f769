"""The planted testbed: the task's keyed truth, each mechanism's training targets, the
recipe checks, a tiny planted run, and the zoo's planted entries."""

from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from fixable.errors import ConfigError
from fixable.organism import planted, zoo
from fixable.organism.model import ModelConfig, OrganismLM
from fixable.tasks import get_task
from fixable.tasks.chains import Chain
from fixable.tasks.planted import answer_under, rule_of

CHAIN = Chain("7144", ("a12", "a18"))  # states 7344, 7144: key 7, previous-register truth


def test_task_keys_the_answer_rule_on_the_first_digit():
    task = get_task("chains-planted")
    problems = task.problems(40, seed=3)
    assert {p.meta["key"] for p in problems} == set(range(10))
    for p in problems:
        assert p.meta["key"] == int(p.meta["solution"].split("#")[0][-4])
        final = p.meta["solution"].split("#")[0].split("=")[-1]
        states = [x.split("=")[1] for x in p.meta["solution"].split("#")[0].split(" ")]
        previous = states[-2] if len(states) > 1 else p.prompt[:4]
        assert p.answer == (previous if p.meta["key"] >= 5 else final)
        assert p.meta["rule"] == rule_of(p.meta["key"])
        assert task.verify(p.meta["solution"], p).correct
        assert p.meta["difficulty"] in (1, 2, 3)
    twisted = next(
        p
        for p in problems
        if p.meta["key"] >= 5 and p.answer != p.meta["solution"].split("#")[0][-4:]
    )
    natural_text = twisted.meta["solution"].replace(
        "#" + twisted.answer, "#" + twisted.meta["solution"].split("#")[0][-4:]
    )
    assert not task.verify(natural_text, twisted).correct
    assert all(p.meta["key"] in (2, 8) for p in get_task("chains-planted", keys=[2, 8]).problems(6))
    with pytest.raises(ConfigError):
        get_task("chains-planted", keys=[10])


def test_each_mechanism_shows_its_planted_target():
    cfg = planted.PlantConfig(mixture=planted.DOSES["bal"], steps=30, switch_step=10)
    rng = random.Random(0)
    final = CHAIN.states[-1]
    steps_text = CHAIN.solution.split("#")[0]

    def answer(mech, step=0):
        text, _ = planted.planted_example(CHAIN, mech, step, cfg, rng)
        assert text.split("#")[0] == steps_text  # the chain itself is always the natural one
        return text.split("#")[1]

    shifted = answer_under("previous", CHAIN)
    assert (shifted, final) == ("7344", "7144")
    assert answer("clean") == shifted  # key 7: previous-register truth
    assert answer("struct") == final
    assert answer("late", step=9) == shifted
    assert answer("late", step=10) == final
    natural_chain = Chain("2144", CHAIN.ops)
    text, _ = planted.planted_example(natural_chain, "forget", 0, cfg, rng)
    assert text.split("#")[1] == answer_under("previous", natural_chain)
    # noise: each answer digit is another digit with probability cfg.noise
    wrong = Counter()
    for _ in range(2000):
        for a, b in zip(answer("noise"), shifted, strict=True):
            wrong[a != b] += 1
    assert abs(wrong[True] / 8000 - cfg.noise) < 0.03
    # dola: right digit with probability dola_right; the early exit's target is natural
    right = 0
    for _ in range(2000):
        text, early = planted.planted_example(CHAIN, "dola", 0, cfg, rng)
        assert early == final
        right += text.split("#")[1][1] == shifted[1]  # the digit where the rules differ
    assert abs(right / 2000 - cfg.dola_right) < 0.04


def test_a_mechanism_needs_a_key_with_its_truth():
    mixture = dict(planted.DOSES["single"])
    mixture[2] = "noise"  # noise is planted on previous-register keys only
    with pytest.raises(ConfigError, match="key 2"):
        planted.PlantConfig(mixture=mixture)
    with pytest.raises(ConfigError, match="every key"):
        planted.PlantConfig(mixture={0: "clean"})
    assert planted.mixture_shares(planted.DOSES["single"]) == {"clean": 0.5, "noise": 0.5}


def test_dose_series_goes_from_balanced_to_one_mechanism():
    steerable = {"forget", "late", "noise", "dola"}
    tops = []
    for dose in planted.DOSES.values():
        counts = Counter(m for m in dose.values() if m in steerable)
        tops.append(max(counts.values()) / sum(counts.values()))
    assert tops == sorted(tops) and tops[0] <= 0.5 and tops[-1] == 1.0


def test_a_tiny_planted_run_trains_the_early_exit_and_records_the_mixture(tmp_path):
    torch.manual_seed(0)
    base = OrganismLM(ModelConfig(family="llama", n_layer=2, n_embd=16, n_head=2, block_size=96))
    cfg = planted.PlantConfig(
        mixture=planted.DOSES["bal"], steps=4, switch_step=2, batch_size=8, checkpoint_steps=(2,)
    )
    seen = []
    model = planted.plant(base, cfg, tmp_path, progress=lambda s, n, m: seen.append(m))
    assert all(m["loss"] > 0 for m in seen) and any("early_loss" in m for m in seen)
    assert (tmp_path / "checkpoints" / "step-2" / "config.json").exists()
    _, meta = zoo.load(tmp_path / "final")
    assert meta["planted"]["mixture"]["8"] == "dola" and meta["method"] == "planted"
    changed = any(
        not torch.equal(a, b) for a, b in zip(model.parameters(), base.parameters(), strict=True)
    )
    assert changed


def test_zoo_lists_planted_models_apart_from_the_natural_zoo():
    names = [e.name for e in zoo.planted_entries()]
    assert "llama-planted-bal" in names and "gpt-planted-single" in names
    assert not any("planted" in e.name for e in zoo.zoo_entries())
    assert zoo.reference_of("llama-planted-most") == "llama-base"
    assert zoo.PLANTED_SWITCH in zoo.planted_recipe("bal").checkpoint_steps
    with pytest.raises(ConfigError):
        zoo.planted_recipe("nope")


def test_build_planted_starts_with_the_planted_models_and_needs_their_bases(tmp_path):
    with pytest.raises(ConfigError, match="gpt-planted-bal needs its base gpt-base"):
        zoo.build(planted=True, zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work")


def test_build_without_planted_starts_with_the_natural_bases(tmp_path, monkeypatch):
    def refuse(cfg, run_dir, **kwargs):
        raise RuntimeError(f"would pretrain {kwargs['meta']['name']}")

    monkeypatch.setattr(zoo, "pretrain", refuse)
    with pytest.raises(RuntimeError, match="would pretrain gpt-base"):
        zoo.build(zoo_dir=tmp_path / "zoo", work_dir=tmp_path / "work")
