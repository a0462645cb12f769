"""The feature table: one row per feature, read by features, routing, the analysis
pipeline, the figures and their style. A row registered here (as a plug-in would) flows
through the whole analysis and the report without any other file learning about it."""

from __future__ import annotations

import numpy as np
import pytest

from fixable.analysis.pipeline import AnalysisConfig, analyze
from fixable.analysis.routing import ROUTER_FEATURES
from fixable.analysis.synthetic import planted_rollouts
from fixable.errors import ConfigError, DataError
from fixable.features import (
    ABLATIONS,
    FEATURES,
    Feature,
    ablation_features,
    axis_feature,
    display_name,
    failure_features,
    feature,
    feature_table,
    register_feature,
    remove_feature,
    signature_features,
)
from fixable.report.figures import draw_feature_distributions, draw_regime_map

MODELS = ("gpt-sft-s0", "gpt-rl-s0", "llama-sft-s0", "llama-rl-s0")
INFO = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in MODELS}
FAST = AnalysisConfig(n_boot=40, stability_boot=4, n_seeds=2, n_splits=3)

DISTINCT = Feature(
    "distinct_answer_share",
    "retry",
    "distinct-answer share (test)",
    "never: every failure has probes",
    lambda s: s["n_distinct_answers"] / s["n_probes"],
)
NEVER = Feature(
    "never_known",
    "temperature",
    "a feature nobody can compute (test)",
    "the test's own reason it is unavailable",
    lambda s: np.full(len(s), np.nan),
    ablation=False,
)
TOKENS = Feature(
    "probe_tokens",
    "reference",
    "probe tokens (test ablation)",
    "no tokens",
    lambda s: s["mean_tokens"],
    ablation=True,
)


@pytest.fixture
def registered():
    for row in (DISTINCT, NEVER, TOKENS):
        register_feature(row)
    try:
        yield
    finally:
        for row in (DISTINCT, NEVER, TOKENS):
            remove_feature(row.name)


def test_the_built_in_rows_are_the_three_features_and_their_ablations():
    assert (
        signature_features()
        == FEATURES
        == (
            "answer_dispersion",
            "trajectory_uncertainty",
            "reference_drift",
        )
    )
    assert ablation_features() == ABLATIONS
    assert [axis_feature(a) for a in ("reference", "retry", "temperature")] == list(ROUTER_FEATURES)
    assert display_name("answer_dispersion") == "answer dispersion (F1)"
    assert display_name("not a feature") == "not a feature"
    with pytest.raises(DataError, match="unknown feature"):
        feature("not a feature")
    with pytest.raises(ConfigError, match="axis"):
        Feature("x", "sideways", "x", "x", lambda s: s["n_probes"])
    with pytest.raises(ConfigError, match="already"):
        register_feature(feature("answer_dispersion"))


def test_a_registered_feature_flows_through_features_analysis_and_figures(registered):
    table, _ = planted_rollouts(MODELS, n_failures=12, n_solved=2, r=16, seed=3)
    features = failure_features(table)
    assert {DISTINCT.name, NEVER.name, TOKENS.name} <= set(features.columns)
    expected = features["n_distinct_answers"] / features["n_probes"]
    assert np.allclose(features[DISTINCT.name], expected)
    assert [f.name for f in feature_table()][-1] == TOKENS.name  # ablations last

    analysis = analyze(table, model_info=INFO, config=FAST)
    doc = analysis.result["features"]
    assert DISTINCT.name in doc["used"]
    # the unavailable row is reported with its own reason, not a KeyError
    assert NEVER.name not in doc["used"]
    assert doc["unavailable"][NEVER.name].endswith(NEVER.unavailable)
    assert TOKENS.name in doc["ablations"] and TOKENS.name in doc["summary"]
    assert DISTINCT.name in analysis.result["regimes"]["features_used"]
    topo_sets = analysis.result["topography"].get("ablations", {})
    assert any(DISTINCT.name in s.get("features", []) for s in topo_sets.values())

    failures = analysis.failures
    titles = [ax.get_title() for ax in draw_feature_distributions({}, failures).axes]
    assert DISTINCT.display in titles
    labels = [ax.get_ylabel() for ax in draw_regime_map({}, failures).axes]
    assert display_name("reference_drift") in labels


def test_the_router_reads_the_axis_features_not_added_rows(registered):
    # a second retry-axis feature does not displace answer dispersion in the rule
    assert axis_feature("retry") == "answer_dispersion"
