"""Recovery of a known truth (the positive control): the confusion of a truth column with the
analysis' outputs, its scores and its within-model permutation null; and the analysis end to
end on synthetic rollouts whose truth is written into the problems' metadata, routed by a
router frozen elsewhere (``frozen_router``)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from fixable.analysis.pipeline import AnalysisConfig, analyze, load_runs
from fixable.analysis.recovery import confusion, known_truth_recovery, recovery_block
from fixable.analysis.synthetic import planted_rollouts
from fixable.analysis.thresholds import FamilyRouter
from fixable.errors import ConfigError, DataError
from fixable.store import Run
from fixable.types import Problem


def test_confusion_counts_each_pair_and_drops_missing():
    truth = ["a", "a", "b", "b", "b", None, "c"]
    predicted = ["x", "y", "y", "y", None, "x", "x"]
    assert confusion(truth, predicted) == {"a": {"x": 1, "y": 1}, "b": {"y": 2}, "c": {"x": 1}}
    block = recovery_block(truth, predicted, n_null=20)
    assert block["n"] == 5 and block["n_missing"] == 2


def test_a_perfect_output_scores_one_and_beats_its_null():
    rng = np.random.default_rng(0)
    truth = rng.choice(["forget", "late", "noise"], size=90)
    relabelled = {"forget": "mix", "late": "checkpoint", "noise": "T=0.3"}
    block = recovery_block(truth, [relabelled[t] for t in truth], n_null=50)
    assert block["nmi"] == pytest.approx(1.0)
    assert block["ari"] == pytest.approx(1.0)
    assert block["purity"] == pytest.approx(1.0)
    assert block["null"]["nmi_mean"] < 0.1
    assert block["null"]["p_value"] == pytest.approx(1 / 51)


def test_an_output_independent_of_the_truth_scores_zero():
    truth = ["a", "b"] * 30
    block = recovery_block(truth, ["same"] * 60, n_null=20)
    assert block["nmi"] == pytest.approx(0.0)
    assert block["ari"] == pytest.approx(0.0)
    assert block["purity"] == pytest.approx(0.5)
    assert block["null"]["p_value"] == pytest.approx(1.0)


def test_the_null_permutes_within_models_so_model_identity_is_not_recovery():
    # every failure of model A is truth "x", every one of model B truth "y"; an output that
    # only knows the model recovers the pooled truth perfectly, but permuting the truth
    # within each model changes nothing, so the null matches it (p = 1)
    failures = pd.DataFrame(
        {
            "model": ["A"] * 20 + ["B"] * 20,
            "truth": ["x"] * 20 + ["y"] * 20,
            "label": ["from A"] * 20 + ["from B"] * 20,
        }
    )
    out = known_truth_recovery(failures, against=("label",), n_null=20)
    pooled = out["pooled"]["label"]
    assert pooled["nmi"] == pytest.approx(1.0)
    assert pooled["null"]["nmi_mean"] == pytest.approx(1.0)
    assert pooled["null"]["p_value"] == pytest.approx(1.0)
    assert set(out["per_model"]) == {"A", "B"}
    assert out["per_model"]["A"]["label"]["confusion"] == {"x": {"from A": 20}}
    assert out["truth_counts"] == {"A": {"x": 20}, "B": {"y": 20}}


def test_absent_columns_are_skipped_and_a_missing_truth_refused():
    failures = pd.DataFrame({"model": ["A"] * 4, "truth": list("abab"), "label": list("xyxy")})
    out = known_truth_recovery(failures, against=("label", "routed_setting"), n_null=20)
    assert out["columns"] == ["label"]
    assert "routed_setting" in out["skipped"]
    with pytest.raises(DataError, match="known-truth column"):
        known_truth_recovery(failures.drop(columns="truth"))
    with pytest.raises(DataError, match="empty"):
        known_truth_recovery(failures.assign(truth=None))


# --------------------------------------------------------------------------- end to end

MODELS = ["gpt-rl-s0", "llama-rl-s0"]
INFO = {m: {"family": m.split("-")[0], "method": "rl", "seed": 0} for m in MODELS}


def _thresholds_doc(value: dict) -> dict:
    return {
        "format": "fixable-router-thresholds",
        "format_version": 1,
        "families": {
            f: {"thresholds": value, "calibration_models": [f"{f}-other-s1"]}
            for f in ("gpt", "llama")
        },
    }


@pytest.fixture(scope="module")
def truth_run(tmp_path_factory):
    """Synthetic failures whose kind (the truth) is in the problems' metadata."""
    path = tmp_path_factory.mktemp("recovery") / "run"
    table, truth = planted_rollouts(MODELS, n_failures=30, r=16, seed=3)
    run = Run.create(path, run_seed=3)
    with run.writer() as writer:
        writer.extend(table.to_pylist())
    kinds = {pid: kind for (_, pid), kind in truth["kind"].items()}
    problems = sorted(set(table.column("problem_id").to_pylist()))
    run.write_problems(
        Problem(pid, "prompt", "1", "synthetic", meta={"kind": kinds.get(pid, "solved")})
        for pid in problems
    )
    thresholds = path.parent / "thresholds.json"
    # between the synthetic kinds' feature values (answer dispersion 1/8 .. 1, entropy 0.2 ..
    # 1.8 nats, drift 0.1 .. 1.6)
    thresholds.write_text(
        json.dumps(
            _thresholds_doc(
                {
                    "reference_drift": 0.8,
                    "answer_dispersion": 0.7,
                    "trajectory_uncertainty": 0.5,
                }
            )
        )
    )
    return path, thresholds, truth


def test_analysis_reports_recovery_of_a_metadata_truth(truth_run):
    path, thresholds, truth = truth_run
    table, sources = load_runs([path])
    config = AnalysisConfig(
        n_boot=50, stability_boot=3, frozen_router=str(thresholds), truth="kind"
    )
    analysis = analyze(table, sources=sources, model_info=INFO, config=config)
    result = analysis.result
    recovery = result["recovery"]
    assert recovery["field"] == "kind"
    assert set(recovery["per_model"]) == set(MODELS)
    # every failure's truth is its planted kind
    got = dict(
        zip(
            zip(analysis.failures["model"], analysis.failures["problem_id"], strict=True),
            analysis.failures["truth"],
            strict=True,
        )
    )
    assert got == truth["kind"]
    # the regime label from the rescue outcomes recovers the planted kinds' labels
    label = recovery["pooled"]["label"]["confusion"]
    assert label["steer-mix"] == {"steerable-hard": label["steer-mix"]["steerable-hard"]}
    assert label["structural"].get("structural", 0) >= 10
    # the setting best on the labelling part is the one planted to rescue each kind
    oracle = recovery["pooled"]["oracle_setting"]
    for kind, setting in (
        ("steer-mix", "mix(alpha=0.5)"),
        ("steer-cold", "temperature(T=0.3)"),
        ("steer-hot", "temperature(T=1.3)"),
    ):
        row = oracle["confusion"][kind]
        assert max(row, key=row.get) == setting
    assert oracle["nmi"] > oracle["null"]["nmi_high"]
    # the router is the frozen one, and it is evaluated per model too
    routing = result["routing"]
    assert routing["router"].startswith("FamilyRouter")
    assert set(routing["thresholds"]) == {"family gpt", "family llama"}
    assert routing["calibration"]["calibrated_on"] == ["gpt-other-s1", "llama-other-s1"]
    for model in MODELS:
        block = routing["per_model"][model]["subsets"]["all"]
        assert block["n_models"] == 1
        lift = block["lift_over_best_fixed"]["routed"]
        assert lift["low"] <= lift["value"] <= lift["high"]
        assert "shuffled_within_model" in block["lift_over_best_fixed"]
    routed = recovery["pooled"]["routed_setting"]["confusion"]
    assert max(routed["steer-mix"], key=routed["steer-mix"].get) == "mix(alpha=0.5)"


def test_truth_without_problem_metadata_is_skipped_with_the_reason(truth_run):
    path, _, _ = truth_run
    table, _ = load_runs([path])
    config = AnalysisConfig(n_boot=20, stability_boot=2, truth="kind")
    result = analyze(table, model_info=INFO, config=config).result  # no sources: no store
    assert "recovery" not in result
    assert "problems' metadata" in result["skipped"]["recovery"]


def test_family_router_refuses_a_family_without_thresholds():
    router = FamilyRouter(_thresholds_doc({"reference_drift": 1.0}))
    features = pd.DataFrame({"family": ["qwen"], "reference_drift": [2.0]})
    with pytest.raises(DataError, match="qwen"):
        router.route(features, ["retry", "mix(alpha=0.5)"])


def test_frozen_router_must_be_shipped_or_a_file(tmp_path):
    with pytest.raises(ConfigError, match="frozen_router"):
        AnalysisConfig(frozen_router=str(tmp_path / "absent.json"))
    assert AnalysisConfig(frozen_router="shipped").frozen_router == "shipped"


# --------------------------------------------------------------------------- the report


def test_the_report_shows_a_known_truth_analysis_as_its_positive_control(truth_run, tmp_path):
    from fixable.analysis.pipeline import write_analysis
    from fixable.report import build_report
    from fixable.report.control import SECTION_ID, TITLE
    from fixable.report.html import render_page

    path, thresholds, _ = truth_run
    table, sources = load_runs([path])
    config = AnalysisConfig(n_boot=30, stability_boot=2, frozen_router=str(thresholds))
    plain = analyze(table, sources=sources, model_info=INFO, config=config)
    known = analyze(
        table,
        sources=sources,
        model_info=INFO,
        config=AnalysisConfig(**{**vars(config), "truth": "kind"}),
    )
    assert f'id="{SECTION_ID}"' not in render_page(plain.result, [], run_label="plain")
    page = render_page(plain.result, [], run_label="plain", control=known.result)
    section = page[page.index(f'id="{SECTION_ID}"') :]
    assert TITLE in section and "A positive control, not a result about natural failures" in section
    for model in MODELS:  # a per-model routing row and a per-model confusion
        assert f'<td class="text">{model}</td>' in section
        assert f"{model}: truth × router" in section
    assert "Truth × regime label (rescue outcomes), all models" in section
    assert "steer-mix" in section and "shuffled within the model" in section
    # a run with a truth of its own shows it there too; build_report takes a control dir
    control = tmp_path / "control"
    write_analysis(known, control)
    plain_dir = tmp_path / "plain"
    write_analysis(plain, plain_dir)
    files = build_report(plain_dir, control=control, formats=("png",))
    assert f'id="{SECTION_ID}"' in files.html.read_text()
    assert f'id="{SECTION_ID}"' in render_page(known.result, [], run_label="known")


@pytest.fixture(scope="module")
def learned_run(truth_run):
    """The truth run analysed with the learned (and free) routers, once for the module."""
    path, thresholds, _ = truth_run
    table, sources = load_runs([path])
    config = AnalysisConfig(
        n_boot=30, stability_boot=2, frozen_router=str(thresholds), learned_router=True
    )
    return analyze(table, sources=sources, model_info=INFO, config=config)


def test_the_learned_router_is_evaluated_beside_the_rule(learned_run):
    analysis = learned_run
    result = copy.deepcopy(analysis.result)
    routing = result["routing"]
    assert analysis.failures["learned_setting"].notna().sum() == routing["subsets"]["all"]["n"]
    learned = routing["learned"]
    assert "leave-one-model-out" in learned["router"]
    assert set(learned["per_model"]) == set(MODELS)
    block = learned["subsets"]["all"]
    assert block["n"] == routing["subsets"]["all"]["n"]
    # the planted kinds share their signature across models: the learned router, fitted on
    # the other models, beats its own routes shuffled within each model
    lift = block["lift_over_best_fixed"]
    assert lift["routed"]["value"] > lift["shuffled_within_model"]["value"]
    from fixable.report.control import control_section

    result["recovery"] = result.get("recovery") or {"field": "kind"}
    html = control_section(result)
    assert "A learned router against best fixed" in html and "all models (pooled)" in html


def test_the_learned_router_is_printed_with_its_controls(truth_run, learned_run):
    from fixable.demo import headline_table
    from fixable.report.summary import headline

    path, thresholds, _ = truth_run
    table, sources = load_runs([path])
    result = learned_run.result
    rows = {r["id"]: r for r in headline(result)}
    learned = rows["learned_router_lift_steerable_hard_vs_best_fixed"]
    over = result["routing"]["learned"]["subsets"]["steerable-hard"]["lift_over_best_fixed"]
    assert learned["value"] == over["routed"]["value"]
    assert learned["controls"]["shuffled_within_model"] == over["shuffled_within_model"]["value"]
    names = [row[0] for row in headline_table({"headline": list(rows.values())})]
    assert "learned router vs best fixed, steerable-hard" in names
    # without the learned router the table has no such row
    plain = analyze(
        table,
        sources=sources,
        model_info=INFO,
        config=AnalysisConfig(n_boot=30, stability_boot=2, frozen_router=str(thresholds)),
    ).result
    assert not any(r["id"].startswith("learned_router") for r in headline(plain))
    assert not any(r["id"].startswith("free_router") for r in headline(plain))


def test_the_free_router_is_evaluated_uncharged_and_printed(learned_run):
    from fixable.demo import headline_table
    from fixable.report.control import control_section
    from fixable.report.summary import headline

    analysis = learned_run
    result = copy.deepcopy(analysis.result)
    free = result["routing"]["learned_free"]
    assert free["features"] == ["answer_dispersion", "trajectory_uncertainty"]
    assert analysis.failures["free_setting"].notna().sum() == free["subsets"]["all"]["n"]
    # it teacher-forces nothing, so charging it changes nothing; the learned router (F3) pays
    over = free["subsets"]["all"]["lift_over_best_fixed"]
    assert over["routed_charged"]["value"] == over["routed"]["value"]
    paid = result["routing"]["learned"]["subsets"]["all"]["lift_over_best_fixed"]
    assert paid["routed_charged"]["value"] < paid["routed"]["value"]
    rows = {r["id"]: r for r in headline(result)}
    row = rows["free_router_lift_all_vs_best_fixed"]
    assert row["value"] == over["routed"]["value"]
    # the sensitivity interval with the router refitted in the bootstrap rides along
    low, high = row["controls"]["interval_with_router_refitted"]
    assert low <= high
    assert [low, high] == [
        free["refitted_lift_over_best_fixed"]["all"]["low"],
        free["refitted_lift_over_best_fixed"]["all"]["high"],
    ]
    names = [r[0] for r in headline_table({"headline": list(rows.values())})]
    assert "free router (F1, F2) vs best fixed, all" in names
    result["recovery"] = result.get("recovery") or {"field": "kind"}
    assert "The free router" in control_section(result)
