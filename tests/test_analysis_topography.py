"""Topography honesty checks (protocol v2: held-out models). A planted method signal is
found; a model-identity signal without a method signal scores at the permutation null
(while the v1 problem-grouped CV falls for it); the majority baseline takes the most
frequent class with unbalanced classes; nothing is fitted on a held-out model; the v1 CV
seeds really draw different folds; the null's permutations differ."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from fixable.analysis.synthetic import planted_rollouts
from fixable.analysis.topography import (
    MethodClassifier,
    grouped_cv,
    held_out_folds,
    held_out_predictions,
    topography,
    topography_by_problem,
)
from fixable.features import failure_features, failure_texts

MODELS = [f"gpt-{m}-s{s}" for m in ("sft", "rl", "distill", "rft") for s in (0, 1)]
MAIN = {"features": ["answer_dispersion", "trajectory_uncertainty", "reference_drift"]}


def _prepare(table):
    features = failure_features(table)
    texts = (
        failure_texts(table)
        .reindex(pd.MultiIndex.from_frame(features[["model", "problem_id"]]))
        .tolist()
    )
    methods = features["model"].str.split("-").str[1]
    seeds = features["model"].str[-1].astype(int).tolist()
    return features, methods, texts, seeds


@pytest.fixture(scope="module")
def failures():
    table, _ = planted_rollouts(MODELS, n_failures=25, feature_noise=0.1, seed=7)
    return _prepare(table)


def test_planted_method_signal_beats_every_control(failures):
    features, methods, texts, seeds = failures
    rates = {m: 0.5 for m in MODELS}  # every model fails as often: rate alone says nothing
    res = topography(features, methods, texts=texts, seeds=seeds, failure_rates=rates, n_boot=200)
    assert "leave-one-seed-out" in res["protocol"]["cv"]
    acc = res["classifier"]["accuracy"]
    assert acc["n"] == len(MODELS) and set(acc["per_model"]) == set(MODELS)
    assert acc["mean"] > res["majority"]["accuracy"]["mean"] + 0.2
    assert acc["mean"] > res["null"]["q95"] and res["null"]["p_value"] <= 0.05
    assert res["failure_rate_only"]["accuracy"]["mean"] < acc["mean"]
    # the synthetic text carries no method signal
    assert res["text_baseline"]["accuracy"]["mean"] < acc["mean"]
    assert np.array(res["confusion"]["matrix"]).sum() == len(features)
    assert res["null"]["n_permutations"] >= 20
    assert res["null"]["n_distinct_permutations"] > 1  # not one permutation repeated


def test_model_identity_without_method_signal_scores_at_the_null():
    # every model carries its own feature offset; methods leave no trace
    table, _ = planted_rollouts(
        MODELS, n_failures=25, signal=0.0, model_signal=1.0, feature_noise=0.1, seed=3
    )
    features, methods, _, seeds = _prepare(table)
    v2 = topography(features, methods, seeds=seeds, feature_sets=MAIN, n_boot=100)
    null = v2["null"]
    assert null["p_value"] > 0.05  # indistinguishable from methods permuted across models
    assert v2["classifier"]["accuracy"]["mean"] <= null["q95"] + 1e-9
    # v1 (problem-grouped CV: every model in every training fold) falls for it
    v1 = topography_by_problem(features, methods, feature_sets=MAIN, n_seeds=2, n_boot=100)
    assert v1["classifier"]["accuracy"]["mean"] > v1["majority"]["accuracy"]["mean"] + 0.3


def test_majority_baseline_takes_the_most_frequent_class_with_unbalanced_classes():
    models = [f"gpt-sft-s{s}" for s in range(4)] + ["gpt-rl-s0", "gpt-rl-s1", "gpt-rft-s0"]
    table, _ = planted_rollouts(models, n_failures=10, seed=5)
    features, methods, _, _ = _prepare(table)
    res = topography(features, methods, feature_sets=MAIN, n_boot=50)
    assert "leave-one-model-out" in res["protocol"]["cv"]
    assert res["majority"]["accuracy"]["mean"] == pytest.approx(4 / 7)
    assert "sft" in res["majority"]["how"]
    per_model = res["majority_in_folds"]["accuracy"]["per_model"]
    # sft keeps the training majority when one sft model is held out (3 vs 2 vs 1)
    assert all(per_model[m] == 1.0 for m in models if "-sft-" in m)
    assert all(per_model[m] == 0.0 for m in models if "-sft-" not in m)


class _Spy(ClassifierMixin, BaseEstimator):
    """Records the rows it is fitted on and the rows it predicts."""

    log: list = []

    def __init__(self, random_state=None):
        self.random_state = random_state

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.fit_rows_ = set(X.index)
        self.majority_ = pd.Series(y).value_counts().index[0]
        return self

    def predict(self, X):
        _Spy.log.append((self.random_state, self.fit_rows_, set(X.index)))
        return np.full(len(X), self.majority_)


def test_nothing_is_fitted_on_a_held_out_model(failures):
    features, methods, _, _ = failures
    _Spy.log = []
    scheme, folds = held_out_folds(features["model"], methods)  # no seeds: one model out
    assert scheme == "leave-one-model-out"
    held_out_predictions(_Spy(), features, methods.to_numpy(), folds)
    assert len(_Spy.log) == len(MODELS)
    model_of = features["model"]
    for _, fit_rows, test_rows in _Spy.log:
        assert not (set(model_of[list(fit_rows)]) & set(model_of[list(test_rows)]))


def test_v1_cv_seeds_draw_different_folds(failures):
    features, methods, _, _ = failures
    _Spy.log = []
    grouped_cv(_Spy(), features, methods.to_numpy(), features["problem_id"].to_numpy(), n_seeds=2)
    assert len(_Spy.log) == 10
    problem_of = features["problem_id"]
    folds_by_seed = {}
    for state, fit_rows, test_rows in _Spy.log:
        assert not (fit_rows & test_rows)
        assert not (set(problem_of[list(fit_rows)]) & set(problem_of[list(test_rows)]))
        folds_by_seed.setdefault(state // 1000, []).append(frozenset(test_rows))
    assert set(folds_by_seed[0]) != set(folds_by_seed[1])  # every seed its own folds


def test_method_classifier_is_held_out_per_model(failures):
    features, methods, _, seeds = failures
    scheme, folds = held_out_folds(features["model"], methods, seeds)
    assert scheme == "leave-one-seed-out" and set(folds) == {"seed 0", "seed 1"}
    predicted = held_out_predictions(MethodClassifier(), features, methods.to_numpy(), folds)
    assert len(predicted) == len(features)


# --- the seed-as-label null (leave-one-method-out, must land at chance) ---------------

FAIR_MODELS = [
    f"{f}-{m}-s{s}"
    for f in ("gpt", "llama")
    for m in ("sft", "rl", "distill", "rft")
    for s in (0, 1, 2)
]


def _feature_frame(seed_shift: float, *, random_state: int) -> tuple[pd.DataFrame, list, list]:
    """Failures of the fair zoo's 24 models: every model has its own feature offset and
    each method one of its own; ``seed_shift`` adds seed × shift to every feature (a
    seed effect shared across methods, which the null must detect)."""
    rng = np.random.default_rng(random_state)
    method_offset = {m: rng.normal(0, 1.0, 3) for m in ("sft", "rl", "distill", "rft")}
    rows = []
    for name in FAIR_MODELS:
        _, method, seed = name.split("-")
        centre = method_offset[method] + rng.normal(0, 0.7, 3) + int(seed[1]) * seed_shift
        for i in range(20):
            f1, f2, f3 = centre + rng.normal(0, 0.3, 3)
            rows.append(
                {
                    "model": name,
                    "problem_id": f"p{i}",
                    "answer_dispersion": f1,
                    "trajectory_uncertainty": f2,
                    "reference_drift": f3,
                    "method": method,
                    "seed": int(seed[1]),
                }
            )
    frame = pd.DataFrame(rows)
    return frame, frame["method"].tolist(), frame["seed"].tolist()


def test_seed_as_label_is_at_chance_when_seeds_leave_no_trace():
    features, methods, seeds = _feature_frame(0.0, random_state=11)
    res = topography(features, methods, seeds=seeds, feature_sets=MAIN, n_boot=200)
    # three seeds per method: the method classifier trains on two per method per fold
    assert "leave-one-seed-out" in res["protocol"]["cv"] and "3 folds" in res["protocol"]["cv"]
    null = res["seed_as_label"]
    assert null["labels"] == ["s0", "s1", "s2"] and null["chance"] == pytest.approx(1 / 3)
    assert null["n_models"] == 24 and "leave-one-method-out (4 folds)" in null["how"]
    assert null["at_chance"]
    assert null["null"]["p_value"] > 0.05
    # the method signal is there all the same
    assert res["classifier"]["accuracy"]["mean"] > 0.5


def test_seed_as_label_detects_a_planted_seed_effect():
    # the same data with a seed shift shared by every method: the null must not be at chance
    features, methods, seeds = _feature_frame(2.5, random_state=11)
    null = topography(features, methods, seeds=seeds, feature_sets=MAIN, n_boot=200)[
        "seed_as_label"
    ]
    assert not null["at_chance"]
    assert null["accuracy"]["mean"] > 0.6 and null["interval"]["low"] > 1 / 3
    assert null["null"]["p_value"] <= 0.05


def test_seed_as_label_never_fits_on_the_held_out_method():
    from fixable.analysis.topography import seed_as_label

    features, methods, seeds = _feature_frame(0.0, random_state=2)
    _Spy.log = []
    seed_as_label(_Spy(), features, seeds, methods, features["model"], n_null=20, n_boot=20)
    method_of = features["method"]
    assert len(_Spy.log) == 4 * (1 + 20)  # four folds, for the score and each permutation
    for _, fit_rows, test_rows in _Spy.log:
        assert len(set(method_of[list(test_rows)])) == 1
        assert not (set(method_of[list(fit_rows)]) & set(method_of[list(test_rows)]))


def test_seed_as_label_is_skipped_with_a_reason_for_a_single_seed(failures):
    features, methods, _, _ = failures
    res = topography(features, methods, seeds=[0] * len(features), feature_sets=MAIN, n_boot=50)
    assert res["seed_as_label"] is None
    assert "2 training seeds" in res["seed_as_label_skipped"]


class _LabelSpy(_Spy):
    """Records the labels each fit sees, per row."""

    seen: list = []

    def fit(self, X, y):
        _LabelSpy.seen.append(dict(zip(X.index, y, strict=True)))
        return super().fit(X, y)


def test_stratified_permutations_stay_within_their_stratum(failures):
    from fixable.analysis.topography import permutation_null

    features, methods, _, _ = failures
    models = features["model"].to_numpy()
    stratum = np.array(["a" if m.split("-")[1] in ("sft", "rl") else "b" for m in models])
    _LabelSpy.seen = []
    res = permutation_null(
        _LabelSpy(),
        features,
        methods.to_numpy(),
        models,
        models,
        n_permutations=20,
        strata=stratum,
    )
    assert res["n_distinct_permutations"] > 1
    allowed = {"a": {"sft", "rl"}, "b": {"distill", "rft"}}
    stratum_of = dict(zip(features.index, stratum, strict=True))
    relabelled = False
    for labels in _LabelSpy.seen:
        for row, label in labels.items():
            assert label in allowed[stratum_of[row]]
            relabelled |= label != methods[row]
    assert relabelled  # the labels did move, within their stratum


# --- the nested comparison and the accuracy-matched view ------------------------------


def _method_frame(
    method_scale: dict[str, float], rates: dict[str, float], *, random_state: int
) -> tuple[pd.DataFrame, list, list, dict]:
    """Failures of the fair zoo's 24 models: each method's features sit at its own offset
    times ``method_scale[method]`` (0: the method leaves no trace), each model fails at
    its method's ``rates`` entry plus a little per-model noise."""
    rng = np.random.default_rng(random_state)
    offset = {m: rng.normal(0, 1.0, 3) for m in ("sft", "rl", "distill", "rft")}
    rows, failure_rates = [], {}
    for name in FAIR_MODELS:
        _, method, seed = name.split("-")
        failure_rates[name] = rates[method] + rng.normal(0, 0.005)
        centre = offset[method] * method_scale[method] + rng.normal(0, 0.3, 3)
        for i in range(20):
            f1, f2, f3 = centre + rng.normal(0, 0.3, 3)
            rows.append(
                {
                    "model": name,
                    "problem_id": f"p{i}",
                    "answer_dispersion": f1,
                    "trajectory_uncertainty": f2,
                    "reference_drift": f3,
                    "seed": int(seed[1]),
                }
            )
    frame = pd.DataFrame(rows)
    methods = frame["model"].str.split("-").str[1].tolist()
    return frame, methods, frame["seed"].tolist(), failure_rates


EVERY_METHOD = {"sft": 1.0, "rl": 1.0, "distill": 1.0, "rft": 1.0}
SAME_RATE = {"sft": 0.5, "rl": 0.5, "distill": 0.5, "rft": 0.5}


def test_nested_comparison_finds_features_beyond_an_uninformative_failure_rate():
    features, methods, seeds, rates = _method_frame(EVERY_METHOD, SAME_RATE, random_state=3)
    res = topography(
        features, methods, seeds=seeds, failure_rates=rates, feature_sets=MAIN, n_boot=200
    )
    rate, both = res["failure_rate_only"], res["features_plus_failure_rate"]
    # the same held-out models, scored in the same folds
    assert set(both["accuracy"]["per_model"]) == set(rate["accuracy"]["per_model"])
    assert set(both["accuracy"]["per_model"]) == set(FAIR_MODELS)
    beyond = res["beyond_failure_rate"]
    gain = beyond["gain"]
    assert gain["value"] == pytest.approx(
        both["accuracy"]["mean"] - rate["accuracy"]["mean"], abs=1e-9
    )
    assert gain["low"] > 0.2 and beyond["verdict"].startswith("features add method")
    assert beyond["models_better"] + beyond["models_worse"] + beyond["models_equal"] == 24


def test_nested_comparison_finds_nothing_when_the_failure_rate_says_it_all():
    # the features carry no method signal; the failure rate names every method
    rates = {"sft": 0.75, "rl": 0.45, "distill": 0.5, "rft": 0.55}
    none = dict.fromkeys(EVERY_METHOD, 0.0)
    features, methods, seeds, rates = _method_frame(none, rates, random_state=3)
    res = topography(
        features, methods, seeds=seeds, failure_rates=rates, feature_sets=MAIN, n_boot=200
    )
    assert res["failure_rate_only"]["accuracy"]["mean"] > 0.9
    assert res["classifier"]["accuracy"]["mean"] < 0.5
    beyond = res["beyond_failure_rate"]
    assert beyond["gain"]["low"] <= 0 and not beyond["verdict"].startswith("features add")


def test_accuracy_matched_view_removes_the_accuracy_confound():
    # sft and rl differ in failure rate only; distill and rft share a rate and differ in
    # their features: failure rate wins overall, the features win among the matched pair
    scale = {"sft": 0.0, "rl": 0.0, "distill": 1.5, "rft": 1.5}
    rates = {"sft": 0.75, "rl": 0.3, "distill": 0.5, "rft": 0.5}
    features, methods, seeds, rates = _method_frame(scale, rates, random_state=5)
    res = topography(
        features,
        methods,
        seeds=seeds,
        failure_rates=rates,
        feature_sets=MAIN,
        matched_methods=[["rft", "distill"], ["sft", "rl"]],
        n_boot=200,
    )
    matched, by_rate = res["matched"]
    assert matched["methods"] == ["distill", "rft"] and matched["n_models"] == 12
    per_model = matched["classifier"]["accuracy"]["per_model"]
    assert set(per_model) == {m for m in FAIR_MODELS if "-distill-" in m or "-rft-" in m}
    assert "leave-one-seed-out" in matched["protocol"]["cv"]
    assert matched["majority"]["accuracy"]["mean"] == pytest.approx(0.5)
    assert np.array(matched["confusion"]["matrix"]).sum() == matched["n_failures"] == 12 * 20
    # failure rate carries nothing among the matched methods; the features do
    assert matched["failure_rate_only"]["accuracy"]["mean"] <= 0.75
    assert matched["classifier"]["accuracy"]["mean"] > matched["null"]["q95"]
    assert matched["beyond_failure_rate"]["gain"]["low"] > 0
    # over all four methods, the failure rate alone does at least as well as the features
    assert res["failure_rate_only"]["accuracy"]["mean"] >= res["classifier"]["accuracy"]["mean"]
    # a second set, its own folds: sft and rl differ in failure rate only
    assert by_rate["methods"] == ["rl", "sft"] and by_rate["n_models"] == 12
    assert by_rate["failure_rate_only"]["accuracy"]["mean"] == 1.0
    assert by_rate["beyond_failure_rate"]["gain"]["high"] <= 0


def test_accuracy_matched_view_says_why_it_is_skipped():
    features, methods, seeds, rates = _method_frame(EVERY_METHOD, SAME_RATE, random_state=3)
    res = topography(
        features,
        methods,
        seeds=seeds,
        failure_rates=rates,
        feature_sets=MAIN,
        matched_methods=[["rft", "sftb"]],
        n_boot=50,
    )
    assert "absent: ['sftb']" in res["matched"][0]["skipped"]
    assert "matched" not in topography(features, methods, seeds=seeds, feature_sets=MAIN, n_boot=50)


def test_analysis_config_reads_matched_methods_and_refuses_a_single_one():
    from fixable.analysis.pipeline import AnalysisConfig
    from fixable.errors import ConfigError

    assert AnalysisConfig(matched_methods="rft, distill").matched_methods == (("distill", "rft"),)
    two = AnalysisConfig(matched_methods=["distill,rft", ("sftb", "rl")])
    assert two.matched_methods == (("distill", "rft"), ("rl", "sftb"))
    assert two.to_dict()["matched_methods"] == [["distill", "rft"], ["rl", "sftb"]]
    assert AnalysisConfig().to_dict()["matched_methods"] == []
    with pytest.raises(ConfigError, match="at least 2"):
        AnalysisConfig(matched_methods="rft")
    with pytest.raises(ConfigError, match="at least 2"):
        AnalysisConfig(matched_methods=["distill,rft", "rft,rft"])


def test_summary_lines_and_tables_print_the_nested_comparison_and_the_matched_views():
    from fixable.analysis.pipeline import _matched_rows, _topography_nested_lines

    scale = {"sft": 0.0, "rl": 0.0, "distill": 1.5, "rft": 1.5}
    rates = {"sft": 0.75, "rl": 0.3, "distill": 0.5, "rft": 0.5}
    features, methods, seeds, rates = _method_frame(scale, rates, random_state=5)
    res = topography(
        features,
        methods,
        seeds=seeds,
        failure_rates=rates,
        feature_sets=MAIN,
        matched_methods=[["distill", "rft"], ["rft", "sftb"]],
        n_boot=50,
    )
    lines = "\n".join(_topography_nested_lines(res))
    both = res["features_plus_failure_rate"]["accuracy"]["mean"] * 100
    assert f"nested: features + failure rate {both:.1f} %" in lines
    assert "accuracy-matched methods (distill, rft; 12 models" in lines
    assert "accuracy-matched (distill, rft): features + failure rate" in lines
    assert "accuracy-matched view (rft, sftb) skipped" in lines
    rows = _matched_rows(res["matched"][0])
    assert rows[0]["predictor"] == "matched (distill, rft): features (F1-F3)"
    assert rows[0]["accuracy_mean"] == res["matched"][0]["classifier"]["accuracy"]["mean"]
    assert any("gain of features + failure rate" in r["predictor"] for r in rows)
    assert _matched_rows(res["matched"][1]) == []


def test_cli_analyze_refuses_a_matched_set_of_one_method(tmp_path, capsys):
    from fixable.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(["analyze", str(tmp_path), "--matched-methods", "rft"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "at least 2 post-training methods" in err and "Traceback" not in err
