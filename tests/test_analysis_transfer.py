"""Transfer: every quantity is reported in both directions beside the in-family figure."""

from __future__ import annotations

import pandas as pd

from fixable.analysis.labels import label_failures, rescue_matrix
from fixable.analysis.routing import Outcomes
from fixable.analysis.synthetic import planted_rollouts
from fixable.analysis.transfer import transfer
from fixable.features import failure_features


def test_both_directions_and_in_family_for_every_quantity():
    models = [f"{f}-{m}-s{s}" for f in ("gpt", "llama") for m in ("sft", "rl") for s in (0, 1)]
    table, _ = planted_rollouts(models, n_failures=10, seed=8)
    features = failure_features(table)
    features["family"] = features["model"].str.split("-").str[0]
    features["method"] = features["model"].str.split("-").str[1]
    features["seed"] = features["model"].str[-1].astype(int)
    matrix = rescue_matrix(table, part="label")
    labels = label_failures(matrix).set_index(["model", "problem_id"])
    labels = labels.loc[
        pd.MultiIndex.from_frame(features[["model", "problem_id"]]), "label"
    ].to_numpy()
    lab = Outcomes.from_matrix(matrix, failures=features)
    out = Outcomes.from_matrix(rescue_matrix(table, part="score"), failures=features)
    res = transfer(
        features, labels=labels, outcomes=out, label_outcomes=lab, budget=4, n_seeds=1, n_boot=100
    )
    pairs = {(p["source"], p["target"]): p for p in res["pairs"]}
    assert set(pairs) == {("gpt", "gpt"), ("gpt", "llama"), ("llama", "gpt"), ("llama", "llama")}
    for (source, target), p in pairs.items():
        assert p["in_family"] == (source == target)
        assert {
            "standardisation",
            "clusters",
            "classifier",
            "best_fixed",
            "router_thresholds",
        } <= set(p)
        assert p["classifier"]["accuracy"]["n"] == len(features[features["family"] == target])
        if p["in_family"]:  # held-out seeds within the family, never the routed failures' medians
            assert "leave-one-seed-out" in p["classifier"]["how"]
            assert "other calibration group" in p["router_thresholds"]["how"]
        assert 0 <= p["best_fixed"]["rescue"]["value"] <= 1
        if not p["in_family"]:
            assert isinstance(p["best_fixed"]["setting"], str)
            assert "accuracy_target_standardisation" in p["classifier"]
    # in-family standardisation is the identity on its own family
    z = pairs[("gpt", "gpt")]["standardisation"]["trajectory_uncertainty"]
    assert abs(z["target_mean_z"]) < 1e-9


def test_one_family_says_why_there_is_no_transfer():
    table, _ = planted_rollouts(["gpt-rl-s0"], n_failures=5)
    features = failure_features(table).assign(family="gpt", method="rl")
    res = transfer(features)
    assert res["pairs"] == [] and "two model families" in res["note"]


def test_a_family_with_one_failure_skips_its_clusters_and_says_why():
    # seen in the real-study dry run: a tiny model family left one failure; clustering it
    # must be skipped, not crash the whole analysis
    table, _ = planted_rollouts(["gpt-rl-s0", "llama-rl-s0"], n_failures=6, seed=3)
    features = failure_features(table)
    features["family"] = features["model"].str.split("-").str[0]
    features["method"] = "rl"
    one = features[features["family"] == "llama"].index[1:]
    features = features.drop(index=one)
    res = transfer(features, n_seeds=1, n_boot=20)
    pairs = {(p["source"], p["target"]): p for p in res["pairs"]}
    assert "too few to cluster" in pairs[("llama", "gpt")]["clusters"]["skipped"]
    assert "too few to cluster" in pairs[("llama", "llama")]["clusters"]["skipped"]
    assert "n_regimes" in pairs[("gpt", "llama")]["clusters"]
