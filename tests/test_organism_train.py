"""Training and post-training of the organism: masking, schedule, seeding, resume, and that
every post-training method runs and moves the weights (tiny models, a few steps each)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from fixable.errors import ConfigError
from fixable.organism.model import ModelConfig, OrganismLM, load_checkpoint, save_checkpoint
from fixable.organism.posttrain import PostTrainConfig, posttrain
from fixable.organism.train import (
    TOKENIZER,
    OptimConfig,
    PretrainConfig,
    collate,
    lm_loss,
    lr_at,
    pretrain,
)

TINY = ModelConfig(family="llama", n_layer=1, n_embd=16, n_head=2, block_size=96)


def tiny_pretrain(steps: int = 6, **kw) -> PretrainConfig:
    return PretrainConfig(
        model=TINY,
        optim=OptimConfig(lr=1e-2, warmup=2),
        steps=steps,
        batch_size=8,
        difficulty_weights={1: 1.0},
        checkpoint_steps=(2, 4),
        state_every=3,
        **kw,
    )


def test_collate_masks_prompt_and_padding():
    prompts = [TOKENIZER.encode("12|a", bos=True), TOKENIZER.encode("1|", bos=True)]
    completions = [TOKENIZER.encode("ab", eos=True), TOKENIZER.encode("a", eos=True)]
    inputs, targets, mask = collate(prompts, completions)
    assert inputs.shape == targets.shape == mask.shape == (2, 7)
    # row 0: 5 prompt tokens + 3 completion tokens = 8 → 7 input positions, last 3 are targets
    assert mask[0].tolist() == [False] * 4 + [True] * 3
    assert targets[0, mask[0]].tolist() == completions[0]
    # row 1: 3 + 2 tokens, right-padded: targets at positions 2 and 3, padding after
    assert mask[1].tolist() == [False, False, True, True, False, False, False]
    assert targets[1, mask[1]].tolist() == completions[1]


def test_loss_ignores_prompt_tokens():
    torch.manual_seed(0)
    model = OrganismLM(TINY)
    prompts = [TOKENIZER.encode("12|a", bos=True)]
    completions = [TOKENIZER.encode("ab", eos=True)]
    inputs, targets, mask = collate(prompts, completions)
    loss, _ = lm_loss(model, inputs, targets, mask)
    other = targets.clone()
    other[~mask] = 5  # change only the prompt targets: the loss must not move
    loss2, _ = lm_loss(model, inputs, other, mask)
    assert torch.equal(loss, loss2)


def test_schedule_warms_up_then_decays_to_floor():
    optim = OptimConfig(lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, optim) == pytest.approx(0.1)
    assert lr_at(9, 100, optim) == pytest.approx(1.0)
    assert lr_at(99, 100, optim) == pytest.approx(0.1, abs=1e-3)
    assert lr_at(50, 100, optim) > lr_at(80, 100, optim)


def test_pretrain_learns_and_writes_checkpoints(tmp_path):
    cfg = replace(tiny_pretrain(40), optim=OptimConfig(lr=1e-2, warmup=5))
    seen = []
    model = pretrain(cfg, tmp_path, progress=lambda s, n, m: seen.append(m["loss"]))
    assert len(seen) == 40
    assert sum(seen[-5:]) / 5 < sum(seen[:5]) / 5 - 0.5  # it learns the output format
    assert (tmp_path / "final" / "model.safetensors").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-2", "step-4"]
    meta = json.loads((tmp_path / "final" / "config.json").read_text())["meta"]
    assert meta["method"] == "pretrain" and meta["step"] == 40
    assert not model.training


def test_same_seed_same_weights_and_resume_equals_uninterrupted(tmp_path):
    cfg = tiny_pretrain(6)
    a = pretrain(cfg, tmp_path / "a")

    class Crash(Exception):
        pass

    def crash_at_5(step, total, metrics):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        pretrain(cfg, tmp_path / "b", progress=crash_at_5)
    assert (tmp_path / "b" / "state.pt").exists()  # written at step 3
    b = pretrain(cfg, tmp_path / "b")  # resumes at step 3
    assert not (tmp_path / "b" / "state.pt").exists()
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c = pretrain(replace(cfg, seed=1), tmp_path / "c")
    assert not torch.equal(a.embed_tokens.weight, c.embed_tokens.weight)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> OrganismLM:
    torch.manual_seed(0)
    path = save_checkpoint(OrganismLM(TINY), tmp_path_factory.mktemp("base") / "ckpt")
    return load_checkpoint(path)[0]


def small_post(method: str, **kw) -> PostTrainConfig:
    return PostTrainConfig(
        method,
        steps=3,
        batch_size=4,
        prompts_per_step=2,
        group_size=4,
        pool_problems=4,
        pool_samples=2,
        max_new_tokens=24,
        difficulty_weights={1: 1.0},
        checkpoint_steps=(1, 2),
        state_every=2,
        **kw,
    )


@pytest.mark.parametrize("method", ["sft", "rl", "distill"])
def test_posttraining_moves_weights_and_leaves_base_alone(base, tmp_path, method, monkeypatch):
    before = {k: v.clone() for k, v in base.state_dict().items()}
    extra = {"kl_coef": 0.1} if method == "rl" else {}
    if method == "rl":  # a random base never earns a reward: force one to see a gradient
        import fixable.organism.posttrain as pt

        monkeypatch.setattr(pt._CHECKER, "extract", lambda text: "0000" if len(text) % 2 else None)
    model = posttrain(base, small_post(method, **extra), tmp_path)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), f"{method} changed the base's {k}"
    moved = any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert moved, f"{method} left the weights where they were"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1", "step-2"]
    meta = json.loads((tmp_path / "final" / "config.json").read_text())["meta"]
    assert meta["method"] == method


def test_rft_without_correct_samples_says_what_to_change(base, tmp_path):
    with pytest.raises(ConfigError, match="pool_problems"):
        posttrain(base, small_post("rft"), tmp_path)


def test_unknown_method_is_refused():
    with pytest.raises(ConfigError, match="sft"):
        PostTrainConfig("ppo")
