"""Recovery of a known truth: how the analysis' outputs line up with a truth fixed before
any sampling (a positive control, e.g. the planted testbed's mechanism per problem).

``known_truth_recovery(failures, truth=...)`` takes a per-failure table holding a
known-truth column (on the planted testbed: the problem's ``meta["key"]`` mapped through the
model's recipe to the mechanism planted on it) and, for each output column — by default the
regime label from the rescue outcomes (``label``), the unsupervised regimes
(``regime_gmm``, ``regime_kmeans``), the router's choice (``routed_setting``) and the
setting best on the labelling part (``oracle_setting``) — returns the confusion counts
(truth × output), NMI, ARI and the truth's purity within each output value, beside a null:
the truth permuted among each model's failures (``n_null`` times), which keeps every
model's mixture and destroys the per-failure correspondence. Per model and pooled.

Nothing here is fitted: the columns compared were produced without the truth.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from fixable.errors import DataError

logger = logging.getLogger(__name__)

RECOVERY_COLUMNS = ("label", "regime_gmm", "regime_kmeans", "routed_setting", "oracle_setting")
POOLED = "all models"


def confusion(truth: Sequence, predicted: Sequence) -> dict[str, dict[str, int]]:
    """``{truth value: {predicted value: count}}`` over rows where both are present."""
    t, p = _present(truth, predicted)
    out: dict[str, dict[str, int]] = {}
    for a, b in zip(t, p, strict=True):
        row = out.setdefault(a, {})
        row[b] = row.get(b, 0) + 1
    return {a: dict(sorted(row.items())) for a, row in sorted(out.items())}


def _present(truth: Sequence, predicted: Sequence) -> tuple[np.ndarray, np.ndarray]:
    t = pd.Series(list(truth), dtype=object)
    p = pd.Series(list(predicted), dtype=object)
    if len(t) != len(p):
        raise DataError(f"truth has {len(t)} rows, the compared column {len(p)}")
    keep = (t.notna() & p.notna()).to_numpy()
    return t[keep].astype(str).to_numpy(), p[keep].astype(str).to_numpy()


def _purity(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Share of failures whose output value's most common truth is their own truth."""
    frame = pd.DataFrame({"t": truth, "p": predicted})
    return float(frame.groupby("p")["t"].agg(lambda s: s.value_counts().iloc[0]).sum() / len(frame))


def _scores(truth: np.ndarray, predicted: np.ndarray) -> dict:
    return {
        "nmi": float(normalized_mutual_info_score(truth, predicted)),
        "ari": float(adjusted_rand_score(truth, predicted)),
        "purity": _purity(truth, predicted),
    }


def _permuted_within(values: np.ndarray, groups: np.ndarray, rng: np.random.Generator):
    out = values.copy()
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        out[idx] = values[rng.permutation(idx)]
    return out


def recovery_block(
    truth: Sequence,
    predicted: Sequence,
    groups: Sequence | None = None,
    *,
    n_null: int = 20,
    random_state: int = 0,
) -> dict:
    """Confusion, NMI, ARI and purity of ``predicted`` against ``truth``, and the null of
    the truth permuted within ``groups`` (all rows one group when None)."""
    t_all = pd.Series(list(truth), dtype=object)
    p_all = pd.Series(list(predicted), dtype=object)
    g_all = pd.Series(
        list(groups) if groups is not None else ["all"] * len(t_all), dtype=object
    ).astype(str)
    if not (len(t_all) == len(p_all) == len(g_all)):
        raise DataError("truth, the compared column and the groups must have the same length")
    keep = (t_all.notna() & p_all.notna()).to_numpy()
    t = t_all[keep].astype(str).to_numpy()
    p = p_all[keep].astype(str).to_numpy()
    g = g_all[keep].to_numpy()
    block = {
        "n": int(len(t)),
        "n_missing": int((~keep).sum()),
        "confusion": confusion(t, p),
    }
    if len(t) == 0:
        return block | {"nmi": None, "ari": None, "purity": None, "null": None}
    observed = _scores(t, p)
    rng = np.random.default_rng(random_state)
    null = np.array(
        [_scores(_permuted_within(t, g, rng), p)["nmi"] for _ in range(n_null)], dtype=float
    )
    block |= observed
    block["null"] = {
        "how": f"truth permuted among each model's failures, {n_null} times (NMI)",
        "nmi_mean": float(null.mean()),
        "nmi_high": float(np.quantile(null, 0.95)),
        "p_value": float((1 + np.sum(null >= observed["nmi"] - 1e-12)) / (1 + n_null)),
    }
    return block


def known_truth_recovery(
    failures: pd.DataFrame,
    *,
    truth: str = "truth",
    against: Sequence[str] = RECOVERY_COLUMNS,
    by: str = "model",
    n_null: int = 20,
    random_state: int = 0,
) -> dict:
    """Per model (``by``) and pooled: each ``against`` column's recovery of the ``truth``
    column (see the module docstring). Columns absent from ``failures`` are listed as
    skipped, with the reason."""
    if truth not in failures:
        raise DataError(f"no known-truth column {truth!r} among the failures' columns")
    if failures[truth].isna().all():
        raise DataError(f"the known-truth column {truth!r} is empty for every failure")
    present = [c for c in against if c in failures and failures[c].notna().any()]
    skipped = {c: "not computed in this analysis" for c in against if c not in present}
    groups = failures[by].astype(str) if by in failures else pd.Series("all", index=failures.index)
    out = {
        "truth": truth,
        "columns": present,
        "skipped": skipped,
        "truth_counts": {
            m: {str(k): int(v) for k, v in part[truth].dropna().astype(str).value_counts().items()}
            for m, part in failures.groupby(groups, sort=True)
        },
        "per_model": {},
        "pooled": {},
    }
    for i, column in enumerate(present):
        out["pooled"][column] = recovery_block(
            failures[truth],
            failures[column],
            groups,
            n_null=n_null,
            random_state=random_state + i,
        )
        for m, part in failures.groupby(groups, sort=True):
            out["per_model"].setdefault(m, {})[column] = recovery_block(
                part[truth], part[column], n_null=n_null, random_state=random_state + i
            )
    return out


__all__ = ["POOLED", "RECOVERY_COLUMNS", "confusion", "known_truth_recovery", "recovery_block"]
