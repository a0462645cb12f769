"""The rescue matrix (ground truth, offline) and the regime label of every failure.

``rescue_matrix`` counts, per failed problem and intervention setting, how many of the R
rescue rollouts were correct, with a Wilson or Beta interval. ``label_failures`` turns a
failure's row of that matrix into one of the four regimes of SPEC §3.3:

- ``resamplable``:    ``r_retry >= resample``                                  (default 0.05)
- ``steerable-hard``: ``r_retry < resample`` and ``max_i r_i >= steer_hard``   (default 0.50)
- ``steerable-weak``: ``r_retry < resample`` and ``steer_weak <= max_i r_i < steer_hard``
- ``structural``:     ``r_retry < resample`` and ``max_i r_i < steer_weak``    (default 0.05)

``max_i`` runs over the bounded interventions (every setting but ``retry``). A label is
``uncertain`` when an interval it was decided on straddles a threshold the decision used.
The interval of ``max_i r_i`` is ``[max_i low_i, max_i high_i]``: the best setting's
estimate is biased upwards by the choice among several, and its own interval alone would
ignore that the runner-up could be the true best.

Protocol v2 (SPEC §3.2): selection never sees the samples it is scored on. The rescue
sweep's R samples of each (failure, setting) are split by sample index parity: **even**
indices form the *labelling part* (labels, subsets, the best-fixed and oracle choices),
**odd** indices the *scoring part* (every strategy's rescue). Samples of the
``label`` phase (written by sequential labelling, ``fixable.analysis.sequential``) belong
to the labelling part whatever their index. ``rescue_matrix(..., part="label"|"score")``
selects a part; ``part=None`` pools everything (protocol v1, kept for tests).

Note on small R: 0 successes in R = 32 samples has a 95 % Wilson upper bound of 0.107, above
the 0.05 retry threshold, so at R = 32 every non-resamplable label is ``uncertain`` at the
95 % level: certifying ``r < 0.05`` takes R >= 73 all-failed samples. The counts
"without uncertain" are then small or empty; that is the data speaking, not a bug.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from fixable.analysis.stats import INTERVAL_METHODS, rate_estimate, rate_interval
from fixable.errors import ConfigError
from fixable.features import FAILURE_KEY, as_table
from fixable.interventions import COST_FACTOR

logger = logging.getLogger(__name__)

REGIMES = ("resamplable", "steerable-hard", "steerable-weak", "structural")
RETRY = "retry"
RESCUE_PHASE, LABEL_PHASE = "rescue", "label"
PARTS = ("label", "score")
SPLIT_RULE = (
    "rescue-sweep samples with even sample_index (and every sequential-labelling sample) "
    "label; odd sample_index score"
)


def select_part(table, part: str | None):
    """The rescue-side rows of ``part``: ``"label"`` (even sample indices of the sweep and
    every ``label``-phase sample), ``"score"`` (odd sample indices of the sweep) or None
    (every rescue-sweep sample: protocol v1)."""
    import pyarrow as pa

    table = as_table(table)
    phase = table["phase"]
    sweep = pc.equal(phase, RESCUE_PHASE)
    if part is None:
        return table.filter(sweep)
    if part not in PARTS:
        raise ConfigError(f"part must be one of {', '.join(PARTS)} or None, got {part!r}")
    odd = pc.equal(pc.bit_wise_and(table["sample_index"].cast(pa.int64()), 1), 1)
    if part == "score":
        return table.filter(pc.and_(sweep, odd))
    return table.filter(pc.or_(pc.and_(sweep, pc.invert(odd)), pc.equal(phase, LABEL_PHASE)))


@dataclass(frozen=True)
class LabelThresholds:
    """Where the regimes part (SPEC §3.3 defaults) and how uncertainty is judged."""

    resample: float = 0.05  # r_retry at or above this: resamplable
    steer_hard: float = 0.50  # best bounded intervention at or above this: steerable-hard
    steer_weak: float = 0.05  # best bounded intervention at or above this: steerable-weak
    interval: str = "wilson"  # "wilson" or "beta" (Beta(1,1) posterior, equal-tailed)
    level: float = 0.95  # coverage of the intervals

    def __post_init__(self):
        for name in ("resample", "steer_hard", "steer_weak"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ConfigError(f"label threshold {name} must be in (0, 1], got {value!r}")
        if self.steer_weak > self.steer_hard:
            raise ConfigError(
                f"label threshold steer_weak ({self.steer_weak}) must not exceed steer_hard ({self.steer_hard})"
            )
        if self.interval not in INTERVAL_METHODS:
            raise ConfigError(
                f"interval must be one of {', '.join(INTERVAL_METHODS)}, got {self.interval!r}"
            )
        if not 0.0 < self.level < 1.0:
            raise ConfigError(f"interval level must be in (0, 1), got {self.level!r}")

    @classmethod
    def parse(cls, text: str) -> LabelThresholds:
        """``"resample=0.05,steer_hard=0.5,interval=beta"`` → LabelThresholds."""
        fields: dict = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise ConfigError(f"cannot read threshold {part!r}; write e.g. 'steer_hard=0.5'")
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in cls.__dataclass_fields__:
                raise ConfigError(
                    f"unknown threshold {key!r}; known: {', '.join(cls.__dataclass_fields__)}"
                )
            try:
                fields[key] = value if key == "interval" else float(value)
            except ValueError:
                raise ConfigError(f"threshold {key} must be a number, got {value!r}") from None
        return cls(**fields)

    def to_dict(self) -> dict:
        return asdict(self)


def rescue_matrix(
    rollouts, thresholds: LabelThresholds = LabelThresholds(), *, part: str | None = None
) -> pd.DataFrame:
    """One row per (model, problem, setting) of the rescue phase: samples, successes, rate,
    interval and mean cost per sample; ``part`` selects the labelling or scoring part
    (``select_part``; None: every sweep sample, protocol v1).

    Rows a backend reported as failed (status ``error``) hold no sample: they are counted in
    ``n_errors`` and left out of ``n``. ``cost_per_sample`` is the mean of ``cost_tokens``
    (tokens × forward passes per token, so ``mix`` is charged twice); where a shard lacks
    ``cost_tokens`` it is ``n_tokens`` × the intervention's cost factor."""
    table = select_part(rollouts, part)
    n_tokens = (
        table["n_tokens"].to_numpy(zero_copy_only=False).astype(float)
        if "n_tokens" in table.column_names
        else None
    )
    kinds = table["intervention"].to_pylist()
    if "cost_tokens" in table.column_names:
        cost = (
            pc.fill_null(table["cost_tokens"], np.nan).to_numpy(zero_copy_only=False).astype(float)
        )
    else:
        cost = np.full(table.num_rows, np.nan)
    if n_tokens is not None and np.isnan(cost).any():
        factor = np.array([COST_FACTOR.get(k, 1.0) for k in kinds])
        cost = np.where(np.isnan(cost), n_tokens * factor, cost)
    frame = pd.DataFrame(
        {
            "model": table["model"].to_pylist(),
            "problem_id": table["problem_id"].to_pylist(),
            "setting": table["setting"].to_pylist(),
            "intervention": kinds,
            "error": [s == "error" for s in table["status"].to_pylist()],
            "correct": pc.fill_null(table["correct"], False)
            .to_numpy(zero_copy_only=False)
            .astype(bool),
            "cost": cost,
        }
    )
    frame["valid"] = ~frame["error"]
    frame["success"] = frame["correct"] & frame["valid"]
    frame["valid_cost"] = np.where(frame["valid"], frame["cost"], np.nan)
    grouped = (
        frame.groupby(FAILURE_KEY + ["setting"], sort=True)
        .agg(
            intervention=("intervention", "first"),
            n=("valid", "sum"),
            successes=("success", "sum"),
            n_errors=("error", "sum"),
            cost_per_sample=("valid_cost", "mean"),
        )
        .reset_index()
    )
    grouped["n"] = grouped["n"].astype(int)
    grouped["successes"] = grouped["successes"].astype(int)
    with np.errstate(invalid="ignore", divide="ignore"):
        grouped["rate"] = grouped["successes"] / grouped["n"].where(grouped["n"] > 0)
    low, high = rate_interval(
        grouped["successes"].to_numpy(),
        grouped["n"].to_numpy(),
        thresholds.interval,
        thresholds.level,
    )
    grouped["low"], grouped["high"] = low, high
    return grouped


def _straddles(low, high, threshold) -> np.ndarray:
    return (np.asarray(low) < threshold) & (np.asarray(high) >= threshold)


def label_failures(
    matrix: pd.DataFrame, thresholds: LabelThresholds = LabelThresholds()
) -> pd.DataFrame:
    """The regime of every failure in ``matrix`` (a ``rescue_matrix``), with the figures it
    was decided on, an ``uncertain`` flag and which thresholds made it uncertain."""
    t = thresholds
    if matrix.empty:
        return pd.DataFrame(columns=FAILURE_KEY + ["label", "uncertain"])
    has = matrix["n"] > 0
    retry = matrix[(matrix["setting"] == RETRY) & has].set_index(FAILURE_KEY)
    bounded = matrix[(matrix["setting"] != RETRY) & has]
    failures = matrix[FAILURE_KEY].drop_duplicates().set_index(FAILURE_KEY).sort_index()
    out = failures.copy()
    out["n_retry"] = retry["n"].reindex(out.index)
    out["r_retry"] = retry["rate"].reindex(out.index)
    out["retry_low"] = retry["low"].reindex(out.index)
    out["retry_high"] = retry["high"].reindex(out.index)
    if not bounded.empty:
        best_idx = bounded.groupby(FAILURE_KEY)["rate"].idxmax()
        best = bounded.loc[best_idx.to_numpy()].set_index(FAILURE_KEY)
        # when nothing rescued anything, no setting is "best" (idxmax would name the first)
        out["best_setting"] = best["setting"].where(best["rate"] > 0).reindex(out.index)
        out["best_rate"] = best["rate"].reindex(out.index)
        out["n_best"] = best["n"].reindex(out.index)
        out["best_low"] = bounded.groupby(FAILURE_KEY)["low"].max().reindex(out.index)
        out["best_high"] = bounded.groupby(FAILURE_KEY)["high"].max().reindex(out.index)
    else:
        for col in ("best_setting", "best_rate", "n_best", "best_low", "best_high"):
            out[col] = np.nan

    r, best = out["r_retry"].to_numpy(float), out["best_rate"].to_numpy(float)
    resamplable = r >= t.resample
    label = np.where(
        np.isnan(r),
        None,
        np.where(
            resamplable,
            "resamplable",
            np.where(
                np.isnan(best),
                None,
                np.where(
                    best >= t.steer_hard,
                    "steerable-hard",
                    np.where(best >= t.steer_weak, "steerable-weak", "structural"),
                ),
            ),
        ),
    )
    out["label"] = label
    reasons = []
    retry_unsure = _straddles(out["retry_low"], out["retry_high"], t.resample)
    hard_unsure = _straddles(out["best_low"], out["best_high"], t.steer_hard)
    weak_unsure = _straddles(out["best_low"], out["best_high"], t.steer_weak)
    for i in range(len(out)):
        why = []
        if label[i] is None:
            reasons.append("")
            continue
        if retry_unsure[i]:
            why.append(f"retry interval straddles {t.resample:g}")
        if label[i] != "resamplable":
            if hard_unsure[i]:
                why.append(f"best-intervention interval straddles {t.steer_hard:g}")
            if weak_unsure[i]:
                why.append(f"best-intervention interval straddles {t.steer_weak:g}")
        reasons.append("; ".join(why))
    out["uncertain"] = [bool(w) for w in reasons]
    out["uncertain_reason"] = reasons
    unlabeled = int(pd.isna(out["label"]).sum())
    if unlabeled:
        logger.warning(
            "%d failures have no retry or no bounded rescue samples: left unlabelled", unlabeled
        )
    return out.reset_index()


def label_counts(labels: pd.DataFrame, thresholds: LabelThresholds = LabelThresholds()) -> dict:
    """Counts and shares of each regime, with and without the uncertain labels."""
    labelled = labels[labels["label"].notna()]
    certain = labelled[~labelled["uncertain"].astype(bool)]
    out = {
        "n_failures": int(len(labels)),
        "n_labelled": int(len(labelled)),
        "n_certain": int(len(certain)),
        "regimes": {},
    }
    for regime in REGIMES:
        k_all = int((labelled["label"] == regime).sum())
        k_cert = int((certain["label"] == regime).sum())
        out["regimes"][regime] = {
            "all": rate_estimate(
                k_all, len(labelled), thresholds.interval, thresholds.level
            ).to_dict()
            | {"count": k_all},
            "certain_only": rate_estimate(
                k_cert, len(certain), thresholds.interval, thresholds.level
            ).to_dict()
            | {"count": k_cert},
        }
    return out


def rates_wide(matrix: pd.DataFrame) -> pd.DataFrame:
    """The rescue rate of every setting as columns ``rescue[<setting>]``, one row per failure."""
    wide = matrix.pivot_table(index=FAILURE_KEY, columns="setting", values="rate", aggfunc="first")
    wide.columns = [f"rescue[{c}]" for c in wide.columns]
    return wide.reset_index()
