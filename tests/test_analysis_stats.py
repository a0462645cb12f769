"""Intervals and the success-within-budget estimator against exact or textbook values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fixable.analysis.stats import (
    beta_interval,
    bootstrap_mean_estimate,
    group_weights,
    mean_std,
    rate_estimate,
    success_within,
    wilson_interval,
)
from fixable.errors import ConfigError


def test_wilson_matches_textbook_values():
    low, high = wilson_interval(0, 32)
    assert low == 0.0 and high == pytest.approx(0.10718, abs=1e-4)
    low, high = wilson_interval(16, 32)
    assert (low, high) == pytest.approx((0.3363, 0.6637), abs=1e-3)
    low, high = wilson_interval(32, 32)
    assert high == 1.0
    assert np.isnan(wilson_interval(0, 0)[0])


def test_beta_interval_is_the_beta_1_1_posterior():
    from scipy import stats

    low, high = beta_interval(3, 10)
    assert low == pytest.approx(stats.beta.ppf(0.025, 4, 8))
    assert high == pytest.approx(stats.beta.ppf(0.975, 4, 8))


def test_levels_are_validated():
    with pytest.raises(ConfigError, match="level"):
        wilson_interval(1, 2, level=1.5)


@pytest.mark.parametrize("n,c", [(6, 0), (6, 1), (6, 3), (7, 7), (8, 2)])
def test_success_within_is_the_chance_a_random_subset_holds_a_success(n, c):
    outcomes = [1] * c + [0] * (n - c)
    for d in range(0, n + 1):
        subsets = list(itertools.combinations(range(n), d))
        exact = np.mean([any(outcomes[i] for i in s) for s in subsets]) if d else 0.0
        assert success_within(n, c, d) == pytest.approx(exact)


def test_fractional_draws_interpolate_and_overdraws_are_refused():
    assert success_within(8, 2, 2.5) == pytest.approx(
        0.5 * success_within(8, 2, 2) + 0.5 * success_within(8, 2, 3)
    )
    with pytest.raises(ConfigError, match="exceed"):
        success_within(8, 2, 9)
    arr = success_within(np.array([4, 4]), np.array([0, 4]), np.array([2, 2]))
    assert list(arr) == [0.0, 1.0]


def test_group_weights_move_groups_together():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    w = group_weights(groups, 50, np.random.default_rng(0))
    assert w.shape == (50, 6)
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 5])
    # three groups are drawn per replicate
    counts = w[:, [0, 2, 3]]
    assert np.all(counts.sum(axis=1) == 3)


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small = rng.random(20)
    large = rng.random(2000)
    e_small = bootstrap_mean_estimate(small, np.arange(20), n_boot=500)
    e_large = bootstrap_mean_estimate(large, np.arange(2000), n_boot=500)
    assert e_small.low <= e_small.value <= e_small.high
    assert (e_large.high - e_large.low) < (e_small.high - e_small.low) / 3
    assert e_small.n == 20


def test_rate_estimate_and_mean_std():
    e = rate_estimate(3, 10, "beta")
    assert e.value == 0.3 and e.n == 10 and "beta" in e.interval
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(np.sqrt(2)), "n": 2}


def test_certifying_a_zero_rate_below_5_percent_takes_73_samples():
    # the figure docs/analysis.md and labels.py quote: 0 of R is certainly < 0.05 from R = 73
    from fixable.analysis.stats import wilson_interval

    assert wilson_interval(0, 72)[1] > 0.05 > wilson_interval(0, 73)[1]
