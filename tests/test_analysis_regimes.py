"""Clustering regimes: planted clusters are recovered (with the planted k), stability is
high on clean data and low on noise, and agreement measures behave on hand examples."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fixable.analysis.regimes import (
    RegimeClusterer,
    agreement,
    bootstrap_stability,
    purity,
    split_stability,
)
from fixable.errors import DataError
from fixable.features import FEATURES


def _planted(n_per=40, k=4, spread=0.15, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2.0, (k, 3))
    truth = np.repeat(np.arange(k), n_per)
    values = centres[truth] + rng.normal(0, spread, (len(truth), 3))
    frame = pd.DataFrame(values, columns=list(FEATURES))
    frame["model"] = "m"
    frame["problem_id"] = [f"p{i}" for i in range(len(frame))]
    return frame, truth


@pytest.mark.parametrize("method", ["gmm", "kmeans"])
def test_planted_regimes_are_recovered_with_their_number(method):
    frame, truth = _planted()
    model = RegimeClusterer(method=method, random_state=0).fit(frame)
    assert model.n_regimes_ == 4
    assert agreement(model.predict(frame), truth)["ari"] > 0.95


def test_stability_is_high_on_clean_clusters_and_lower_on_noise():
    frame, _ = _planted()
    clean, _ = bootstrap_stability(RegimeClusterer(n_regimes=4, random_state=0), frame, n_boot=8)
    noise = frame.copy()
    noise[list(FEATURES)] = np.random.default_rng(1).normal(size=(len(frame), 3))
    noisy, _ = bootstrap_stability(RegimeClusterer(n_regimes=4, random_state=0), noise, n_boot=8)
    assert clean.value > 0.9
    assert noisy.value < clean.value - 0.2


def test_split_stability_compares_shared_failures():
    frame, _ = _planted(seed=2)
    other = frame.copy()
    other[list(FEATURES)] += np.random.default_rng(3).normal(0, 0.05, (len(frame), 3))
    out = split_stability(
        RegimeClusterer(n_regimes=4, random_state=0),
        [frame, other.iloc[5:]],
        key=["model", "problem_id"],
    )
    assert out["pairs"][0]["n"] == len(frame) - 5
    assert out["ari"] > 0.9


def test_purity_and_agreement_on_hand_examples():
    assert purity([0, 0, 1, 1], ["a", "a", "b", "a"]) == 0.75
    res = agreement([0, 0, 1, 1], ["a", "a", "b", "b"])
    assert res["nmi"] == pytest.approx(1.0) and res["purity"] == 1.0
    res = agreement([0, 0, 1], ["a", None, "b"])
    assert res["n"] == 2  # unlabelled failures are left out


def test_unavailable_features_are_refused_by_name():
    frame, _ = _planted(n_per=5)
    frame.loc[0, "reference_drift"] = np.nan
    with pytest.raises(DataError, match="unavailable features"):
        RegimeClusterer().fit(frame)
    model = RegimeClusterer(
        features=["answer_dispersion", "trajectory_uncertainty"], random_state=0
    ).fit(frame)
    assert model.n_features_in_ == 2


def test_regime_means_are_in_feature_units():
    frame, truth = _planted(spread=0.01)
    model = RegimeClusterer(n_regimes=4, random_state=0).fit(frame)
    means = model.regime_means(frame)
    assert means["n"].sum() == len(frame)
    true_means = frame.groupby(truth)[list(FEATURES)].mean().to_numpy()
    for row in means[list(FEATURES)].to_numpy():
        assert np.min(np.abs(true_means - row).max(axis=1)) < 0.05
