"""Intervals and resampling for small samples: Wilson and Beta intervals on rates, the
unbiased "success within n draws" estimator, and grouped bootstrap intervals.

Every figure fixable reports carries an interval and its n; this module is where those
intervals come from. Everything is vectorised over numpy arrays.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
from scipy import special, stats

from fixable.errors import ConfigError

logger = logging.getLogger(__name__)

INTERVAL_METHODS = ("wilson", "beta")


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ConfigError(f"interval level must be in (0, 1), got {level!r}")


def wilson_interval(successes, n, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of a binomial rate; ``(nan, nan)`` where ``n == 0``."""
    _check_level(level)
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    z = stats.norm.ppf(0.5 + level / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denom = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
        low, high = np.clip(centre - half, 0, 1), np.clip(centre + half, 0, 1)
    # at k = 0 or k = n the bound is exact; floating error must not push it off 0/1
    low = np.where(k == 0, 0.0, low)
    high = np.where(k == n, 1.0, high)
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def beta_interval(successes, n, level: float = 0.95, prior: tuple[float, float] = (1.0, 1.0)):
    """Equal-tailed credible interval of the Beta posterior of a rate (Beta(1, 1) prior)."""
    _check_level(level)
    k = np.asarray(successes, dtype=float)
    n = np.asarray(n, dtype=float)
    a, b = k + prior[0], n - k + prior[1]
    low = stats.beta.ppf((1 - level) / 2, a, b)
    high = stats.beta.ppf(0.5 + level / 2, a, b)
    empty = n == 0
    return np.where(empty, np.nan, low), np.where(empty, np.nan, high)


def rate_interval(successes, n, method: str = "wilson", level: float = 0.95):
    """The interval of a rate by ``method`` (``"wilson"`` or ``"beta"``)."""
    if method == "wilson":
        return wilson_interval(successes, n, level)
    if method == "beta":
        return beta_interval(successes, n, level)
    raise ConfigError(
        f"interval method must be one of {', '.join(INTERVAL_METHODS)}, got {method!r}"
    )


def _log_choose(n, k):
    return special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)


def success_within(n, c, draws) -> np.ndarray:
    """Unbiased estimate of P(at least one success in ``draws`` fresh samples), from ``c``
    successes among ``n`` recorded samples: ``1 - C(n-c, d)/C(n, d)`` (the pass@k estimator).

    ``draws`` may be fractional: the value is then the linear interpolation between
    ``floor(d)`` and ``ceil(d)``, which is the exact expectation of a strategy that draws
    ``ceil(d)`` samples with probability ``frac(d)`` and ``floor(d)`` otherwise — so a
    fractional budget is still estimated without bias. ``draws`` must not exceed ``n``:
    beyond the recorded samples there is no unbiased estimate (callers cap and say so).
    """
    n, c, d = np.broadcast_arrays(
        np.asarray(n, dtype=float), np.asarray(c, dtype=float), np.asarray(draws, dtype=float)
    )
    if np.any(d > n + 1e-9):
        raise ConfigError("draws must not exceed the recorded samples n; cap them first")
    lo = np.floor(d + 1e-9)
    hi = np.minimum(np.ceil(d - 1e-9), n)
    frac = np.clip(d - lo, 0.0, 1.0)

    def at(k):
        failures = n - c
        with np.errstate(invalid="ignore"):
            log_ratio = _log_choose(failures, k) - _log_choose(n, k)
            value = 1.0 - np.exp(log_ratio)
        value = np.where(failures < k, 1.0, value)  # fewer failures than draws: success certain
        value = np.where(k <= 0, 0.0, value)
        return np.where(n <= 0, np.nan, value)

    return (1 - frac) * at(lo) + frac * at(hi)


@dataclass(frozen=True)
class Estimate:
    """A figure with its interval and the number of units it rests on."""

    value: float
    low: float
    high: float
    n: int
    interval: str  # how the interval was made, e.g. "bootstrap-percentile 95% over problems"

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("value", "low", "high"):
            v = d[key]
            d[key] = None if v is None or not np.isfinite(v) else float(v)
        return d


def group_weights(groups, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicate weights, ``(n_boot, n_items)``: resample *groups* with replacement
    and give every item the count of its group. Items of one group (e.g. the same problem
    failed by several models) move together, so their correlation does not shrink intervals."""
    codes, uniques = _codes(groups)
    n_groups = len(uniques)
    counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot)
    return counts[:, codes].astype(float)


def _codes(groups):
    groups = np.asarray(groups)
    uniques, codes = np.unique(groups.astype(str), return_inverse=True)
    return codes, uniques


def bootstrap_means(
    values: np.ndarray,
    groups,
    *,
    n_boot: int = 2000,
    random_state=0,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Bootstrap replicates of the column means of ``values`` (items × columns)."""
    values = np.asarray(values, dtype=float)
    if weights is None:
        weights = group_weights(groups, n_boot, np.random.default_rng(random_state))
    totals = weights.sum(axis=1, keepdims=True)
    totals[totals == 0] = np.nan
    return (weights @ np.nan_to_num(values)) / totals


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    _check_level(level)
    reps = np.asarray(replicates, dtype=float)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(reps, [(1 - level) / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def bootstrap_mean_estimate(
    values,
    groups,
    *,
    n_boot: int = 2000,
    random_state=0,
    level: float = 0.95,
    unit: str = "problems",
) -> Estimate:
    """The mean of per-item ``values`` with a grouped percentile-bootstrap interval (vectorised)."""
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, "none: no items")
    reps = bootstrap_means(values[:, None], groups, n_boot=n_boot, random_state=random_state)[:, 0]
    lo, hi = percentile_interval(reps, level)
    return Estimate(
        float(values.mean()),
        lo,
        hi,
        n,
        f"bootstrap-percentile {level:.0%} over {unit} ({n_boot} resamples)",
    )


def rate_estimate(successes: int, n: int, method: str = "wilson", level: float = 0.95) -> Estimate:
    """A binomial rate as an Estimate with its Wilson or Beta interval."""
    low, high = rate_interval(successes, n, method, level)
    value = successes / n if n else float("nan")
    return Estimate(float(value), float(low), float(high), int(n), f"{method} {level:.0%}")


def mean_std(values) -> dict:
    """Mean and standard deviation (ddof=1) of repeated measurements, with their count."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {
        "mean": float(v.mean()),
        "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "n": int(v.size),
    }
