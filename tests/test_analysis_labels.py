"""The rescue matrix and regime labels: the four rules at their thresholds, the uncertain
flag, counts with and without it, and planted labels recovered from synthetic sweeps."""

from __future__ import annotations

import pytest

from analysis_tables import rescue, rows_table
from fixable.analysis.labels import LabelThresholds, label_counts, label_failures, rescue_matrix
from fixable.analysis.synthetic import planted_rollouts
from fixable.errors import ConfigError


def _labels(rows, thresholds=None):
    thresholds = thresholds or LabelThresholds()
    matrix = rescue_matrix(rows_table(rows), thresholds)
    return label_failures(matrix, thresholds).set_index("problem_id")


def test_the_four_regimes_follow_the_spec():
    rows = (
        rescue("resamplable", "retry", 10, 100)
        + rescue("resamplable", "temperature(T=0.3)", 0, 100)
        + rescue("hard", "retry", 0, 100)
        + rescue("hard", "temperature(T=0.3)", 60, 100)
        + rescue("weak", "retry", 0, 100)
        + rescue("weak", "mix(alpha=0.5)", 20, 100)
        + rescue("structural", "retry", 0, 100)
        + rescue("structural", "mix(alpha=0.5)", 1, 100)
    )
    labels = _labels(rows)
    assert labels.loc["resamplable", "label"] == "resamplable"
    assert labels.loc["hard", "label"] == "steerable-hard"
    assert labels.loc["hard", "best_setting"] == "temperature(T=0.3)"
    assert labels.loc["weak", "label"] == "steerable-weak"
    assert labels.loc["structural", "label"] == "structural"


def test_thresholds_are_inclusive_and_configurable():
    rows = rescue("p", "retry", 0, 40) + rescue("p", "temperature(T=0.3)", 20, 40)
    assert _labels(rows).loc["p", "label"] == "steerable-hard"  # exactly 0.5 counts
    stricter = LabelThresholds(steer_hard=0.6)
    assert _labels(rows, stricter).loc["p", "label"] == "steerable-weak"


def test_uncertain_when_an_interval_straddles_a_threshold():
    rows = (
        rescue("clear", "retry", 0, 400)
        + rescue("clear", "mix(alpha=0.5)", 390, 400)
        + rescue("close", "retry", 0, 400)
        + rescue("close", "mix(alpha=0.5)", 200, 400)
        + rescue("small", "retry", 0, 32)
        + rescue("small", "mix(alpha=0.5)", 30, 32)
    )
    labels = _labels(rows)
    assert not labels.loc["clear", "uncertain"]
    assert labels.loc["close", "uncertain"]
    assert "0.5" in labels.loc["close", "uncertain_reason"]
    # 0/32 has a Wilson upper bound of 0.107 > 0.05: cannot certify r_retry < 0.05
    assert labels.loc["small", "uncertain"]
    assert "retry" in labels.loc["small", "uncertain_reason"]
    counts = label_counts(labels.reset_index())
    hard = counts["regimes"]["steerable-hard"]
    assert hard["all"]["count"] == 3 and hard["certain_only"]["count"] == 1
    assert counts["n_certain"] == 1 and counts["n_labelled"] == 3


def test_backend_errors_are_not_samples_and_mix_cost_is_charged_twice():
    rows = rescue("p", "retry", 1, 10) + rescue("p", "mix(alpha=0.5)", 0, 10, cost_factor=2.0)
    rows.append(
        {
            "problem_id": "p",
            "phase": "rescue",
            "setting": "retry",
            "intervention": "retry",
            "status": "error",
            "sample_index": 99,
            "entropies": None,
            "n_tokens": 0,
            "cost_tokens": 0.0,
        }
    )
    matrix = rescue_matrix(rows_table(rows)).set_index("setting")
    assert matrix.loc["retry", "n"] == 10 and matrix.loc["retry", "n_errors"] == 1
    assert matrix.loc["retry", "cost_per_sample"] == 10
    assert matrix.loc["mix(alpha=0.5)", "cost_per_sample"] == 20


def test_thresholds_validate_and_parse():
    with pytest.raises(ConfigError, match="steer_hard must be in"):
        LabelThresholds(steer_hard=1.5)
    with pytest.raises(ConfigError, match="must not exceed"):
        LabelThresholds(steer_weak=0.6, steer_hard=0.5)
    with pytest.raises(ConfigError, match="interval"):
        LabelThresholds(interval="bayes")
    t = LabelThresholds.parse("resample=0.1, interval=beta, level=0.9")
    assert (t.resample, t.interval, t.level) == (0.1, "beta", 0.9)
    with pytest.raises(ConfigError, match="unknown threshold 'hard'"):
        LabelThresholds.parse("hard=0.5")


def test_planted_labels_are_recovered():
    table, truth = planted_rollouts(["gpt-sft-s0"], n_failures=40, r=64, seed=2)
    labels = label_failures(rescue_matrix(table))
    got = {
        (m, p): lab
        for m, p, lab in zip(labels["model"], labels["problem_id"], labels["label"], strict=True)
    }
    assert got == truth["label"]
