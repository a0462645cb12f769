"""Topography honesty checks: planted method signals are found, shuffled methods fall to
the majority baseline within its interval, and nothing is fitted on a test fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin

from fixable.analysis.synthetic import planted_rollouts
from fixable.analysis.topography import grouped_cv, topography
from fixable.features import failure_features, failure_texts

MODELS = [f"gpt-{m}-s{s}" for m in ("sft", "rl", "distill", "rft") for s in (0, 1)]


@pytest.fixture(scope="module")
def failures():
    table, _ = planted_rollouts(MODELS, n_failures=25, feature_noise=0.1, seed=7)
    features = failure_features(table)
    texts = (
        failure_texts(table)
        .reindex(pd.MultiIndex.from_frame(features[["model", "problem_id"]]))
        .tolist()
    )
    return features, features["model"].str.split("-").str[1], texts


def test_planted_method_signal_beats_majority_and_text(failures):
    features, methods, texts = failures
    res = topography(features, methods, texts=texts, n_seeds=2, n_boot=200)
    acc = res["classifier"]["interval"]
    assert acc["low"] > res["majority"]["accuracy"]["mean"] + 0.1
    # the synthetic text carries no method signal: the text baseline stays near majority
    assert res["text_baseline"]["accuracy"]["mean"] < acc["low"]
    assert np.array(res["confusion"]["matrix"]).sum() == 2 * len(features)
    assert {"only reference_drift", "without reference_drift", "ablation variants"} <= set(
        res["ablations"]
    )


def test_shuffled_methods_fall_to_the_majority_baseline(failures):
    features, methods, _ = failures
    shuffled = pd.Series(
        np.random.default_rng(0).permutation(methods.to_numpy()), index=methods.index
    )
    res = topography(
        features,
        shuffled,
        feature_sets={
            "features": ["answer_dispersion", "trajectory_uncertainty", "reference_drift"]
        },
        n_seeds=3,
        n_boot=300,
    )
    majority = res["majority"]["accuracy"]["mean"]
    assert majority == 0.25  # eight models, two per method, the same number of failures each
    interval = res["classifier"]["interval"]
    assert interval["low"] <= majority <= interval["high"]
    # predicting the training folds' majority falls below the share with balanced classes
    assert res["majority_in_folds"]["accuracy"]["mean"] <= majority


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
        _Spy.log.append((self.fit_rows_, set(X.index)))
        return np.full(len(X), self.majority_)


def test_nothing_is_fitted_on_a_test_fold(failures):
    features, methods, _ = failures
    _Spy.log = []
    grouped_cv(_Spy(), features, methods.to_numpy(), features["problem_id"].to_numpy(), n_seeds=2)
    assert len(_Spy.log) == 10
    problem_of = features["problem_id"]
    for fit_rows, test_rows in _Spy.log:
        assert not (fit_rows & test_rows)
        # grouped: no problem on both sides
        assert not (set(problem_of[list(fit_rows)]) & set(problem_of[list(test_rows)]))
