"""The zoo API on a temporary zoo, the shipped zoo's cards against the acceptance criteria,
the micro model rebuilt from its recipe against its card, and the ``fixable zoo`` CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from fixable.errors import UnknownNameError
from fixable.organism import zoo
from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint
from fixable.tasks.chains import SUBDISTS, TRAIN_SUBDISTS

TINY = ModelConfig(family="llama", n_layer=1, n_embd=16, n_head=2, block_size=64)


def fake_model(root: Path, name: str, steps=(), card: dict | None = None) -> None:
    torch.manual_seed(len(name))
    model = OrganismLM(TINY)
    save_checkpoint(model, root / name, {"name": name}, dtype=torch.float16)
    for s in steps:
        save_checkpoint(model, root / name / "checkpoints" / f"step-{s}", {"step": s})
    if card is not None:
        (root / name / "card.json").write_text(json.dumps(card))


@pytest.fixture
def tmp_zoo(tmp_path) -> Path:
    fake_model(tmp_path, "llama-rl-s0", steps=(10, 2), card={"method": "rl"})
    fake_model(tmp_path, "llama-base", card={"method": "base"})
    fake_model(tmp_path, "gpt-base", card={"method": "base"})
    fake_model(tmp_path, "llama-micro", card={"method": "micro"})
    fake_model(tmp_path, "llama-sft-s1")  # still building: weights but no card
    return tmp_path


def test_list_models_bases_first_and_micro_only_on_request(tmp_zoo):
    assert zoo.list_models(zoo_dir=tmp_zoo) == [
        "gpt-base",
        "llama-base",
        "llama-sft-s1",
        "llama-rl-s0",
    ]
    assert "llama-micro" in zoo.list_models(include_micro=True, zoo_dir=tmp_zoo)
    assert zoo.list_models(zoo_dir=tmp_zoo / "nowhere") == []


def test_resolve_names_checkpoints_and_paths(tmp_zoo):
    assert zoo.resolve("llama-base", zoo_dir=tmp_zoo) == tmp_zoo / "llama-base"
    assert zoo.resolve(tmp_zoo / "gpt-base") == tmp_zoo / "gpt-base"
    assert (
        zoo.resolve("llama-rl-s0@step-2", zoo_dir=tmp_zoo)
        == tmp_zoo / "llama-rl-s0" / "checkpoints" / "step-2"
    )
    with pytest.raises(UnknownNameError, match="Did you mean: llama-base"):
        zoo.resolve("lama-base", zoo_dir=tmp_zoo)
    with pytest.raises(UnknownNameError, match="step-10"):
        zoo.resolve("llama-rl-s0@step-3", zoo_dir=tmp_zoo)
    with pytest.raises(UnknownNameError, match="fixable zoo build"):
        zoo.resolve("gpt-base", zoo_dir=tmp_zoo / "empty")


def test_checkpoints_are_ordered_by_step(tmp_zoo):
    ckpts = zoo.checkpoints("llama-rl-s0", zoo_dir=tmp_zoo)
    assert list(ckpts) == ["step-2", "step-10"]
    assert zoo.checkpoints("llama-base", zoo_dir=tmp_zoo) == {}


def test_load_is_fp32_eval_and_card_and_reference(tmp_zoo):
    model, meta = zoo.load("llama-rl-s0", zoo_dir=tmp_zoo)
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert meta["name"] == "llama-rl-s0" and meta["path"].endswith("llama-rl-s0")
    assert zoo.card("llama-rl-s0", zoo_dir=tmp_zoo) == {"method": "rl"}
    with pytest.raises(UnknownNameError):
        zoo.card("llama-sft-s1", zoo_dir=tmp_zoo)
    assert zoo.reference_of("llama-rl-s0") == "llama-base"
    assert zoo.reference_of("gpt-sft-s1@step-66") == "gpt-base"
    assert zoo.reference_of("gpt-base") is None
    with pytest.raises(UnknownNameError):
        zoo.reference_of("gpt-ppo-s0")


def test_every_recipe_is_named_and_seeded():
    names = [e.name for e in zoo.zoo_entries()]
    # 2 bases + 2 families x 5 methods x 3 seeds: held-out-model topography then trains on
    # two models per method in every leave-one-seed-out fold
    assert len(names) == 32 == len(set(names))
    for method in ("sft", "rl", "distill", "rft", "sftb"):
        a, b, c = (zoo.posttrain_recipe(method, s) for s in (0, 1, 2))
        assert (a.seed, b.seed, c.seed) == (0, 1, 2) and 2 <= len(a.checkpoint_steps) <= 3
        assert a.checkpoint_steps == c.checkpoint_steps and a.steps == c.steps
    assert zoo.posttrain_recipe("sft", 0).subdists == ("move",)


def test_broad_sft_differs_from_narrow_sft_in_data_scope_only():
    narrow, broad = zoo.posttrain_recipe("sft", 1), zoo.posttrain_recipe("sftb", 1)
    assert broad.subdists == TRAIN_SUBDISTS and "alien" not in broad.subdists
    differing = {k for k in vars(narrow) if getattr(narrow, k) != getattr(broad, k)}
    assert differing == {"method", "subdists"}  # same steps, batch, rate, checkpoints


def test_broad_sft_draws_its_own_data_order(monkeypatch):
    # sftb seed s must not replay sft seed s's draws (a seed shared across methods is what
    # the seed-as-label null would catch)
    import fixable.organism.posttrain as posttrain

    seen = {}

    def first_draws(model, rng, batch_size, subdists, weights):
        seen[subdists] = [rng.random() for _ in range(3)]

    monkeypatch.setattr(posttrain, "gold_batch_loss", first_draws)
    for method in ("sft", "sftb"):
        posttrain._sft_step(zoo.posttrain_recipe(method, 0))(None, 5)
    assert seen[("move",)] != seen[TRAIN_SUBDISTS]


def _card(family: str, method: str, seed: int, accuracy: float) -> dict:
    return {
        "family": family,
        "method": method,
        "seed": seed,
        "t1_by_subdist": {"arith": accuracy, "move": accuracy, "cross": accuracy, "alien": 0.0},
    }


def test_accuracy_matched_methods_follow_the_written_rule():
    table = {  # family → method → accuracy of its seeds
        "gpt": {"sft": 0.23, "rl": 0.53, "distill": 0.46, "rft": 0.44, "sftb": 0.48},
        "llama": {"sft": 0.25, "rl": 0.62, "distill": 0.56, "rft": 0.55, "sftb": 0.58},
    }
    cards = {
        f"{f}-{m}-s{s}": _card(f, m, s, a + 0.01 * (s - 1))
        for f, ms in table.items()
        for m, a in ms.items()
        for s in (0, 1, 2)
    }
    cards["gpt-base"] = _card("gpt", "base", 0, 0.5)
    res = zoo.accuracy_matched_methods(cards)
    # distill, rft and sftb lie within 4 points in both families; rl is 5-7 points away
    assert res["methods"] == ["distill", "rft", "sftb"]
    assert res["widest_spread"] == pytest.approx(0.04)
    assert res["accuracy"]["gpt"]["sftb"] == pytest.approx(0.48)
    assert "base" not in res["accuracy"]["gpt"]
    # one family out of the window is enough to drop a method
    cards["llama-sftb-s0"] = _card("llama", "sftb", 0, 0.70)
    assert zoo.accuracy_matched_methods(cards)["methods"] == ["distill", "rft"]
    # a tie in size goes to the tighter set
    tight = {
        f"gpt-{m}-s0": _card("gpt", m, 0, a) for m, a in {"a": 0.40, "b": 0.44, "c": 0.45}.items()
    }
    assert zoo.accuracy_matched_methods(tight, points=0.04)["methods"] == ["b", "c"]
    assert zoo.accuracy_matched_methods(tight, points=0.005)["methods"] == []


# --- the shipped zoo ------------------------------------------------------------------

SHIPPED = zoo.list_models()
needs_zoo = pytest.mark.skipif(
    not {e.name for e in zoo.zoo_entries()} <= set(SHIPPED), reason="the zoo is not fully built"
)


@needs_zoo
def test_shipped_zoo_size_and_cards_are_complete():
    total = sum(p.stat().st_size for p in zoo.ZOO_DIR.rglob("*") if p.is_file())
    assert total <= 60e6, f"zoo is {total / 1e6:.1f} MB, over the 60 MB budget"
    for name in SHIPPED:
        card = zoo.card(name)
        for key in (
            "family",
            "method",
            "seed",
            "params",
            "size_bytes",
            "greedy_accuracy",
            "t1_accuracy",
            "mean_entropy",
            "checkpoints",
        ):
            assert key in card, f"{name} card lacks {key}"
        assert set(card["greedy_accuracy"]) == set(SUBDISTS)
        assert card["base"] == zoo.reference_of(name)
        if card["method"] != "base":
            assert len(zoo.checkpoints(name)) >= 2


@needs_zoo
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_shipped_bases_solve_short_chains_and_fail_long_ones(family):
    by_difficulty = zoo.card(f"{family}-base")["greedy_by_difficulty"]
    assert by_difficulty["1"] >= 0.8
    assert by_difficulty["5"] <= 0.3


@needs_zoo
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_shipped_methods_leave_their_mark(family):
    base = zoo.card(f"{family}-base")
    for seed in zoo.SEEDS:
        sft = zoo.card(f"{family}-sft-s{seed}")
        # narrow SFT on ``move`` forgets arithmetic the base had
        assert sft["greedy_by_subdist"]["arith"] < base["greedy_by_subdist"]["arith"] - 0.1
        rl = zoo.card(f"{family}-rl-s{seed}")
        # RL at the shipped rate changes the models little: it never raises the entropy,
        # and lowers it on average over seeds (llama-rl-s2's card equals its base's, 0.0349)
        assert rl["mean_entropy"] <= base["mean_entropy"]
        for method in ("distill", "rft"):
            card = zoo.card(f"{family}-{method}-s{seed}")
            moved = max(
                abs(card["greedy_by_subdist"][s] - base["greedy_by_subdist"][s])
                for s in TRAIN_SUBDISTS
            )
            assert moved > 0 or card["mean_entropy"] != base["mean_entropy"]
    rl_entropy = [zoo.card(f"{family}-rl-s{seed}")["mean_entropy"] for seed in zoo.SEEDS]
    assert sum(rl_entropy) / len(rl_entropy) < base["mean_entropy"]


@needs_zoo
@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_shipped_broad_sft_keeps_the_operations_narrow_sft_forgets(family):
    for seed in zoo.SEEDS:
        narrow = zoo.card(f"{family}-sft-s{seed}")["t1_by_subdist"]
        broad = zoo.card(f"{family}-sftb-s{seed}")["t1_by_subdist"]
        # trained on every taught operation, broad SFT does not forget arithmetic
        for subdist in ("arith", "cross"):
            assert broad[subdist] > narrow[subdist] + 0.2, (seed, subdist)
        assert (
            zoo.card(f"{family}-sftb-s{seed}")["checkpoints"]
            == zoo.card(f"{family}-sft-s{seed}")["checkpoints"]
        )


@needs_zoo
def test_shipped_accuracy_matched_methods_are_the_documented_ones():
    # docs/organism.md "The fair topography zoo" names them before the topography run
    res = zoo.accuracy_matched_methods()
    assert res["methods"] == ["distill", "rft"]
    # the second pair the docs name (read from the cards, not by the rule): rl and sftb
    for family, accuracy in res["accuracy"].items():
        assert abs(accuracy["rl"] - accuracy["sftb"]) <= zoo.ACCURACY_MATCH_POINTS, family
        assert accuracy["sft"] < min(accuracy[m] for m in ("rl", "distill", "rft", "sftb"))


MICRO_TOLERANCE = {"loss": 0.1, "token_accuracy": 0.05}  # stated in docs/organism.md


@pytest.mark.skipif(
    zoo.MICRO not in zoo.list_models(include_micro=True), reason="the micro model is not built"
)
def test_micro_model_rebuilds_within_tolerance_of_its_card(tmp_path):
    from fixable.organism.cards import card_problems, teacher_forced
    from fixable.organism.train import pretrain

    torch.set_num_threads(1)
    card = zoo.card(zoo.MICRO)
    model = pretrain(zoo.micro_recipe(), tmp_path)
    measured = teacher_forced(model, card_problems(card["n_per_cell"]))["1"]
    for key, tol in MICRO_TOLERANCE.items():
        assert abs(measured[key] - card["teacher_forced"]["1"][key]) <= tol, key
    assert model.num_parameters() == card["params"]


# --- CLI ------------------------------------------------------------------------------


def test_cli_list_prints_a_card_per_model():
    from fixable.cli.zoo import command

    result = CliRunner().invoke(command, ["list", "--micro"])
    assert result.exit_code == 0, result.output
    names = zoo.list_models(include_micro=True)
    if not names:
        assert "fixable zoo build" in result.output
    for name in names:
        assert name in result.output
    if names and all(zoo._has_card(n, None) for n in names):
        assert "greedy arith" in result.output and "params=" in result.output


def test_cli_build_refuses_unknown_names(tmp_path):
    from fixable.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["zoo", "build", "gpt-bse", "--zoo-dir", str(tmp_path), "--work-dir", str(tmp_path)])
    assert exit_info.value.code == 2


def test_topography_study_probes_every_post_trained_model_of_three_seeds():
    from fixable.config import RunConfig, load_run_file

    root = Path(__file__).resolve().parents[1]
    config = RunConfig.from_dict(load_run_file(root / "studies" / "topography.toml"))
    expected = {e.name for e in zoo.zoo_entries() if e.method != "base"}
    assert set(config.models) == expected and len(config.models) == 30
    assert {n.rsplit("-s", 1)[1] for n in config.models} == {"0", "1", "2"}
    assert config.phase == "probe"  # topography needs no rescue sweep
