"""Routing: the rule's branches, thresholds that never see outcomes, compute matching
(mix charged double), the baselines' definitions, and a planted sweep where routing wins."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis_tables import rescue, rows_table
from fixable.analysis.labels import label_failures, rescue_matrix
from fixable.analysis.routing import (
    Outcomes,
    Router,
    SignatureRouter,
    choose_settings,
    cross_fitted_best_fixed,
    evaluate_routing,
    route_failures,
    strategy_values,
)
from fixable.analysis.stats import success_within
from fixable.analysis.synthetic import planted_rollouts
from fixable.errors import ConfigError, DataError
from fixable.features import failure_features

SETTINGS = [
    "retry",
    "temperature(T=0.3)",
    "temperature(T=0.6)",
    "temperature(T=1.3)",
    "mix(alpha=0.25)",
    "mix(alpha=0.5)",
    "checkpoint(c=step-200)",
    "dola(layer=2)",
]


def test_choose_settings_picks_each_branch_by_definition():
    chosen = choose_settings(SETTINGS)
    assert chosen == {
        # the earliest checkpoint: one forward pass per token, where mix pays two
        "toward_reference": "checkpoint(c=step-200)",
        "retry": "retry",
        "temperature_up": "temperature(T=1.3)",
        "temperature_down": "temperature(T=0.3)",
    }
    only_ckpt = choose_settings(
        ["retry", "checkpoint(c=step-400)", "checkpoint(c=step-200)", "dola(layer=1)"]
    )
    assert only_ckpt["toward_reference"] == "checkpoint(c=step-200)"  # the earliest
    assert only_ckpt["temperature_down"] == "dola(layer=1)"
    assert only_ckpt["temperature_up"] is None
    named = choose_settings(
        ["retry", "checkpoint(c=step-10)", "checkpoint(c=last)", "checkpoint(c=first)"]
    )
    assert named["toward_reference"] == "checkpoint(c=first)"
    assert choose_settings(SETTINGS, "mix")["toward_reference"] == "mix(alpha=0.5)"
    with pytest.raises(ConfigError, match="toward_reference"):
        choose_settings(SETTINGS, "base")
    no_ckpt = choose_settings([s for s in SETTINGS if not s.startswith("checkpoint")])
    assert no_ckpt["toward_reference"] == "mix(alpha=0.5)"  # the alpha closest to 0.5


def test_the_rule_follows_its_decision_list():
    features = pd.DataFrame(
        {
            "reference_drift": [2.0, 0.0, 0.0, 0.0],
            "answer_dispersion": [0.0, 0.9, 0.1, 0.1],
            "trajectory_uncertainty": [1.0, 1.0, 0.1, 2.0],
        }
    )
    router = SignatureRouter(
        thresholds={"reference_drift": 1.0, "answer_dispersion": 0.5, "trajectory_uncertainty": 0.5}
    )
    decided = router.decide(features, SETTINGS)
    assert list(decided["branch"]) == [
        "toward_reference",
        "retry",
        "temperature_up",
        "temperature_down",
    ]
    assert list(decided["setting"]) == [
        "checkpoint(c=step-200)",
        "retry",
        "temperature(T=1.3)",
        "temperature(T=0.3)",
    ]
    # a branch whose intervention is not in the grid falls back to retry
    fallback = router.decide(features, ["retry", "temperature(T=0.3)"])
    assert list(fallback["setting"]) == ["retry", "retry", "retry", "temperature(T=0.3)"]
    assert list(fallback["fallback_to_retry"]) == [True, False, True, False]
    # no reference: the drift branch is skipped, never guessed
    no_drift = features.assign(reference_drift=np.nan)
    assert router.decide(no_drift, SETTINGS)["branch"].iloc[0] == "temperature_down"


def test_median_thresholds_come_from_features_only():
    features = pd.DataFrame(
        {
            "reference_drift": [0.0, 1.0, 2.0],
            "answer_dispersion": [0.0, 0.5, 1.0],
            "trajectory_uncertainty": [1.0, 2.0, 3.0],
        }
    )
    assert SignatureRouter().thresholds_for(features) == {
        "reference_drift": 1.0,
        "answer_dispersion": 0.5,
        "trajectory_uncertainty": 2.0,
    }
    fitted = SignatureRouter().fit(features.iloc[:1])
    assert fitted.thresholds_for(features)["reference_drift"] == 0.0
    with pytest.raises(ConfigError, match="unknown features"):
        SignatureRouter(thresholds={"entropy": 1.0}).fit(features)


def test_pooled_thresholds_send_a_drifted_model_back_toward_its_reference():
    # model "far" drifted on every failure, model "near" on none: medians over all failures
    # send all of "far" and none of "near" to the drift branch; per-model medians split each
    features = pd.DataFrame(
        {
            "model": ["far"] * 4 + ["near"] * 4,
            "reference_drift": [2.0, 2.1, 2.2, 2.3, 0.0, 0.1, 0.2, 0.3],
            "answer_dispersion": [0.5] * 8,
            "trajectory_uncertainty": [0.1, 0.2, 0.3, 0.4] * 2,
        }
    )
    toward = "checkpoint(c=step-200)"
    pooled = route_failures(SignatureRouter(), features, SETTINGS)
    assert list(pooled[:4] == toward) == [True] * 4
    assert not (pooled[4:] == toward).any()
    per_model = route_failures(SignatureRouter(), features, SETTINGS, by="model")
    assert (per_model[:4] == toward).sum() == 2 and (per_model[4:] == toward).sum() == 2


def test_analysis_config_checks_calibration_and_nulls():
    from fixable.analysis.pipeline import AnalysisConfig

    assert AnalysisConfig(calibration="*-s1").calibration == ("*-s1",)
    with pytest.raises(ConfigError, match="n_null"):
        AnalysisConfig(n_null=5)


def test_routing_ignores_rescue_outcomes():
    table, _ = planted_rollouts(["gpt-rl-s0", "gpt-sft-s0"], n_failures=20, seed=4)
    features = failure_features(table)
    routed = route_failures(SignatureRouter(), features, list(SETTINGS[:4]) + ["mix(alpha=0.5)"])
    # the router's only inputs are the features and the grid: the same features carrying
    # (random) rescue outcomes and labels beside them give the same routes
    rng = np.random.default_rng(0)
    with_outcomes = features.assign(
        **{f"rescue[{s}]": rng.random(len(features)) for s in SETTINGS[:4]},
        label=rng.choice(["structural", "steerable-hard"], len(features)),
    )
    again = route_failures(
        SignatureRouter(), with_outcomes, list(SETTINGS[:4]) + ["mix(alpha=0.5)"]
    )
    assert list(routed) == list(again)


def test_a_user_router_plugs_in():
    class AlwaysCold:
        def route(self, features, settings):
            return ["temperature(T=0.3)"] * len(features)

    assert isinstance(AlwaysCold(), Router)
    features = pd.DataFrame({"model": ["a", "b"], "answer_dispersion": [0.1, 0.2]})
    assert (
        list(route_failures(AlwaysCold(), features, ["retry", "temperature(T=0.3)"]))
        == ["temperature(T=0.3)"] * 2
    )

    class Rogue:
        def route(self, features, settings):
            return ["beam-search"] * len(features)

    with pytest.raises(DataError, match="not in the grid"):
        route_failures(Rogue(), features, ["retry"])


def _outcomes(rows):
    return Outcomes.from_matrix(rescue_matrix(rows_table(rows)))


def test_compute_matching_charges_mix_twice_and_caps_at_r():
    rows = (
        rescue("p", "retry", 0, 32, tokens=10)
        + rescue("p", "mix(alpha=0.5)", 8, 32, tokens=10, cost_factor=2.0)
        + rescue("p", "temperature(T=0.3)", 8, 32, tokens=5)
    )
    out = _outcomes(rows)
    draws, capped = out.draws(8)
    col = {s: i for i, s in enumerate(out.settings)}
    assert draws[0, col["retry"]] == 8
    assert draws[0, col["mix(alpha=0.5)"]] == 4  # two passes per token: half the samples
    assert draws[0, col["temperature(T=0.3)"]] == 16  # shorter samples: more of them
    p = out.success(8)
    assert p[0, col["mix(alpha=0.5)"]] == pytest.approx(success_within(32, 8, 4))
    draws, capped = out.draws(20)
    assert draws[0, col["temperature(T=0.3)"]] == 32 and capped[0, col["temperature(T=0.3)"]]


def test_baselines_are_what_they_say():
    rows = []
    for i, (a, b) in enumerate([(0, 16), (16, 0), (0, 0), (4, 4)]):
        rows += rescue(f"p{i}", "retry", a, 32) + rescue(f"p{i}", "temperature(T=0.3)", b, 32)
    out = _outcomes(rows)
    routed = np.array(["temperature(T=0.3)", "retry", "retry", "retry"], dtype=object)
    values = strategy_values(out, routed, 4, best_fixed=np.array(["retry"] * 4, dtype=object))
    p = out.success(4)
    assert np.allclose(values["oracle"], p.max(axis=1))
    assert np.allclose(values["random"], p.mean(axis=1))
    half = out.success(4, share=0.5)
    assert np.allclose(values["uniform"], 1 - np.prod(1 - half, axis=1))
    assert np.allclose(values["routed"], [p[0, 1], p[1, 0], p[2, 0], p[3, 0]])
    assert (
        values["oracle"] >= values[["routed", "retry", "random", "uniform"]].max(axis=1) - 1e-12
    ).all()


def test_best_fixed_is_chosen_on_other_problems(monkeypatch):
    from fixable.analysis import routing

    rows = []
    for i in range(20):
        good = "temperature(T=0.3)" if i % 2 else "retry"
        for s in ("retry", "temperature(T=0.3)"):
            rows += rescue(f"p{i}", s, 20 if s == good else 0, 32)
    out = _outcomes(rows)
    fitted_on = []
    original = routing.BestFixedIntervention.fit

    def spy(self, outcomes, y=None):
        fitted_on.append(set(outcomes.keys["problem_id"]))
        return original(self, outcomes, y)

    monkeypatch.setattr(routing.BestFixedIntervention, "fit", spy)
    chosen, choices = cross_fitted_best_fixed(out, 4, random_state=0)
    assert len(fitted_on) == 2
    # two folds: each choice is fitted on one fold and applied to the other, so the
    # training sets are disjoint and together cover every problem exactly once
    assert not (fitted_on[0] & fitted_on[1])
    assert fitted_on[0] | fitted_on[1] == set(out.keys["problem_id"])
    # and the choice is the best setting of the problems it was chosen on
    for train_problems, choice in zip(fitted_on, choices, strict=True):
        odd = np.mean([int(p[1:]) % 2 for p in train_problems])
        if odd != 0.5:
            assert choice == ("temperature(T=0.3)" if odd > 0.5 else "retry")


def test_planted_sweep_routing_beats_retry_and_best_fixed_on_steerable_hard():
    table, _ = planted_rollouts(["gpt-rl-s0", "llama-sft-s0"], n_failures=60, seed=5)
    features = failure_features(table)
    matrix = rescue_matrix(table)
    labels = label_failures(matrix).set_index(["model", "problem_id"])
    out = Outcomes.from_matrix(matrix, failures=features)
    rows = (
        features.set_index(["model", "problem_id"])
        .loc[pd.MultiIndex.from_frame(out.keys)]
        .reset_index()
    )
    routed = route_failures(SignatureRouter(), rows, out.settings)
    res = evaluate_routing(
        out,
        routed,
        budget=8,
        labels=labels.loc[pd.MultiIndex.from_frame(out.keys), "label"].to_numpy(),
        n_boot=300,
        budgets=[1, 4, 8],
    )
    hard = res["subsets"]["steerable-hard"]
    assert hard["n"] > 0
    assert hard["lift"]["retry"]["low"] > 0
    assert hard["lift"]["best_fixed"]["low"] > 0
    assert hard["lift"]["oracle"]["high"] <= 1e-9  # nothing beats the oracle
    assert 0 < hard["oracle_gap_closed"]["value"] <= 1
    curve = res["curves"]["all"]["routed"]["value"]
    assert curve == sorted(curve)  # more budget never hurts
    assert res["curves"]["budgets"] == [1, 4, 8]


def test_evaluation_needs_retry_and_complete_rows():
    rows = rescue("p", "temperature(T=0.3)", 1, 8)
    with pytest.raises(DataError, match="retry"):
        _outcomes(rows)
    rows = (
        rescue("p", "retry", 1, 8)
        + rescue("q", "retry", 1, 8)
        + rescue("q", "temperature(T=0.3)", 1, 8)
    )
    assert len(_outcomes(rows)) == 1  # p lacks a setting: left out (and logged)
