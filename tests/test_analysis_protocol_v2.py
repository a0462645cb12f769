"""Protocol v2 against planted leaks (SPEC §3): a subset selected by an intervention's
outcome does not inflate that intervention's scored rescue; a router evaluated on its
calibration models is refused or flagged; the hierarchical bootstrap resamples models and
refits the thresholds; the router pays for its F3 scoring; the within-model shuffle
equals the router when the router only reads model identity."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pytest

from fixable.analysis.evaluation import (
    FrozenRouting,
    RoutingData,
    calibration_groups,
    evaluate_frozen_routing,
    hierarchical_weights,
    weighted_median,
)
from fixable.analysis.labels import label_failures, rescue_matrix, select_part
from fixable.analysis.pipeline import AnalysisConfig, analyze
from fixable.analysis.routing import Outcomes, SignatureRouter
from fixable.analysis.synthetic import KINDS, SETTINGS, planted_rollouts
from fixable.errors import DataError
from fixable.features import failure_features

MODELS = [f"{f}-{m}-s0" for f in ("gpt", "llama") for m in ("sft", "rl")]
INFO = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in MODELS}
FAST = dict(n_boot=60, stability_boot=3, n_null=20)
# no structure at all: every bounded setting rescues every failure at 0.35, retry never
FLAT = {kind: {s: (0.0 if s == "retry" else 0.35) for s in SETTINGS} for kind in KINDS}


def test_parity_split_is_disjoint_and_complete():
    table, _ = planted_rollouts(["gpt-rl-s0"], n_failures=5, r=8, seed=1)
    label, score = select_part(table, "label"), select_part(table, "score")
    assert set(label["sample_index"].to_pylist()) == {0, 2, 4, 6}
    assert set(score["sample_index"].to_pylist()) == {1, 3, 5, 7}
    assert label.num_rows + score.num_rows == select_part(table, None).num_rows


def test_a_subset_selected_by_outcomes_does_not_inflate_scored_rescue():
    table, _ = planted_rollouts(MODELS, n_failures=30, r=16, rates=FLAT, seed=2)
    # v1: the subset and the score share samples: "steerable-hard" is where the best of
    # four settings happened to reach 0.5, and its rescue is scored on those very samples
    v1 = label_failures(rescue_matrix(table, part=None))
    v1_hard = v1[v1["label"] == "steerable-hard"]
    assert len(v1_hard) > 5 and v1_hard["best_rate"].mean() >= 0.5
    # v2: the same selection on the labelling part, scored on the scoring part, sits at
    # the planted 0.35 (one draw of the oracle's setting: its plain rescue rate)
    res = analyze(table, model_info=INFO, config=AnalysisConfig(budget=1, **FAST)).result
    hard = res["routing"]["subsets"]["steerable-hard"]
    assert hard["n"] > 5
    oracle = hard["rates"]["oracle"]
    assert oracle["value"] < 0.5 and oracle["low"] <= 0.35 + 0.05
    assert abs(oracle["value"] - 0.35) < 0.12
    # retry is 0 on the subset by planting, not by the subset's definition
    assert hard["rates"]["retry"]["value"] == 0.0


def test_router_evaluated_on_its_calibration_models_is_refused_or_flagged():
    table, _ = planted_rollouts(MODELS, n_failures=10, seed=3)
    fitted = SignatureRouter().fit(failure_features(table))
    assert fitted.calibration_models_ == sorted(MODELS)
    with pytest.raises(DataError, match="calibrated on"):
        analyze(table, model_info=INFO, config=AnalysisConfig(**FAST), router=fitted)
    flagged = analyze(
        table,
        model_info=INFO,
        config=AnalysisConfig(allow_calibration_overlap=True, **FAST),
        router=fitted,
    ).result["routing"]
    assert flagged["calibration"]["evaluated_on_calibration"] is True
    assert flagged["calibration"]["flag"].startswith("FLAGGED")
    # calibrated on other models only: accepted, not flagged
    features = failure_features(table)
    other = SignatureRouter().fit(features[features["model"] == "gpt-sft-s0"])
    rest = AnalysisConfig(**FAST)
    kept = analyze(
        table.filter(pc.not_equal(table["model"], "gpt-sft-s0")),
        model_info=INFO,
        config=rest,
        router=other,
    ).result["routing"]
    assert kept["calibration"]["evaluated_on_calibration"] is False
    assert kept["calibration"]["calibrated_on"] == ["gpt-sft-s0"]


def test_default_router_is_frozen_on_the_other_calibration_group():
    table, _ = planted_rollouts(MODELS, n_failures=10, seed=4)
    res = analyze(table, model_info=INFO, config=AnalysisConfig(**FAST)).result["routing"]
    cal = res["calibration"]
    assert cal["scheme"] == "model halves" and cal["evaluated_on_calibration"] is False
    # both halves hold a model of each family; each half is routed with the other's medians
    assert cal["groups"] == {
        "models A": ["gpt-rl-s0", "llama-rl-s0"],
        "models B": ["gpt-sft-s0", "llama-sft-s0"],
    }
    features = failure_features(table)
    other = features[features["model"].isin(["gpt-sft-s0", "llama-sft-s0"])]
    expected = float(np.median(other["reference_drift"]))
    assert res["thresholds"]["models A"]["reference_drift"] == pytest.approx(expected)
    llama = features[features["model"].str.startswith("llama")]
    declared = analyze(
        table, model_info=INFO, config=AnalysisConfig(calibration=("gpt-*",), **FAST)
    ).result["routing"]
    assert declared["calibration"]["evaluated_models"] == ["llama-rl-s0", "llama-sft-s0"]
    assert declared["subsets"]["all"]["n"] == len(llama)


def test_hierarchical_weights_resample_models_then_problems():
    models = np.repeat(["a", "b", "c", "d"], 5)
    strata = np.array(["x"] * 10 + ["y"] * 10)
    w = hierarchical_weights(models, strata, 300, np.random.default_rng(0))
    per_model = np.stack([w[:, models == m].sum(axis=1) for m in "abcd"], axis=1)
    assert (per_model % 5 == 0).all()  # a drawn model brings as many draws as failures
    assert (per_model == 0).any()  # some replicates leave a model out entirely
    assert (w[:, :10].sum(axis=1) == 10).all()  # strata keep their size


def test_weighted_median_and_thresholds_refit_per_replicate():
    values = np.array([1.0, 2.0, 3.0, 10.0])
    assert weighted_median(values, np.ones((1, 4)))[0] == pytest.approx(np.median(values))
    assert weighted_median(values, np.array([[0, 0, 1, 1]]))[0] == pytest.approx(6.5)
    table, _ = planted_rollouts(MODELS, n_failures=10, seed=5)
    data = _routing_data(table)
    router = FrozenRouting(data)
    w = hierarchical_weights(data.models, data.groups, 50, np.random.default_rng(1))
    t = router.thresholds(w)
    assert np.unique(t["models A"][:, 0]).size > 5  # refitted, not frozen once


def test_router_pays_for_scoring_and_shuffle_equals_a_model_only_router():
    table, _ = planted_rollouts(MODELS, n_failures=10, seed=6)
    data = _routing_data(table)
    res = evaluate_frozen_routing(data, budget=4, n_boot=30, n_boot_curves=5)
    rates = res["subsets"]["all"]["rates"]
    assert rates["routed_charged"]["value"] <= rates["routed"]["value"]
    assert res["router_charge"]["mean_samples"] > 4  # K = 8 probes cost about 8 retries
    # a router that only knows the model: features constant within each model
    for i, m in enumerate(sorted(set(data.models))):
        data.features[data.models == m] = [i % 2, (i // 2) % 2, 0.5]
    flat = evaluate_frozen_routing(data, budget=4, n_boot=30, n_boot_curves=5)
    r = flat["subsets"]["all"]["rates"]
    assert r["shuffled_within_model"]["value"] == pytest.approx(r["routed"]["value"])


def _routing_data(table) -> RoutingData:
    features = failure_features(table)
    features["family"] = features["model"].str.split("-").str[0]
    lab_m, score_m = rescue_matrix(table, part="label"), rescue_matrix(table, part="score")
    label = Outcomes.from_matrix(lab_m, failures=features)
    score = Outcomes.from_matrix(score_m, failures=features)
    labels = label_failures(lab_m).set_index(["model", "problem_id"])["label"]
    _, groups = calibration_groups(features)
    charge = (features["n_probes"] * features["mean_tokens"]).to_numpy() / score.unit_cost
    return RoutingData(
        score=score,
        label=label,
        features=features[["reference_drift", "answer_dispersion", "trajectory_uncertainty"]]
        .to_numpy(float)
        .copy(),
        models=features["model"].to_numpy(),
        problems=features["problem_id"].to_numpy(),
        groups=groups,
        labels=labels.reindex(features.set_index(["model", "problem_id"]).index).to_numpy(),
        charge=charge,
    )


def test_sequential_labelling_certifies_labels_without_touching_the_scoring_part(tmp_path):
    from analysis_fakes import AnswerTask, SignatureBackend
    from fixable.analysis.sequential import sequential_labels
    from fixable.store import Run
    from fixable.types import Problem

    grid = ("retry", "temperature(T=1.3)")
    table, _ = planted_rollouts(
        ["fake-policy"], n_failures=3, n_solved=0, kinds=("structural",), r=8, settings=grid, seed=9
    )
    run = Run.create(tmp_path / "run")
    with run.writer() as writer:
        writer.extend(table.to_pylist())
    before = label_failures(rescue_matrix(run.rollouts(), part="label"))
    assert before["uncertain"].all()  # 0 of 4: the interval reaches far above 0.05
    problems = [
        Problem(id=f"synthetic/p{i:04d}", prompt="never: 1|a11|", answer="0042", task="answers")
        for i in range(3)
    ]
    report = sequential_labels(
        SignatureBackend(), AnswerTask(), problems, run, settings=grid, round_size=40, cap=100
    )
    assert (report.certain_before, report.certain_after) == (0, 3)
    assert report.stopped == "all certain" and len(report.rounds) == 2  # 44 then 84 samples
    assert report.samples_spent == 3 * len(grid) * 80
    rollouts = run.rollouts()
    after = label_failures(rescue_matrix(rollouts, part="label"))
    assert (after["label"] == "structural").all() and not after["uncertain"].any()
    assert (rescue_matrix(rollouts, part="score")["n"] == 4).all()  # scoring part untouched
