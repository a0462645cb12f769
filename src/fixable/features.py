"""The failure signature: features of a failed problem computed from its K failed probe
rollouts only — what is known at inference time, before any intervention is tried.

One row per failure (model, problem): a problem *fails* when none of its valid probe
rollouts is correct. The three features (SPEC §3.4):

- ``answer_dispersion`` (F1, retry axis): Shannon entropy of the extracted final answers
  across the K rollouts, "no answer" counted as its own category, divided by ``log K``.
  ``log K`` is the largest entropy K answers can have (all different), so the value is in
  [0, 1] whatever the answer space: 0 = all K rollouts give the same (wrong) answer,
  1 = all K differ. Undefined (NaN) when K = 1.
- ``trajectory_uncertainty`` (F2, temperature axis): mean over rollouts of the mean
  per-token entropy (nats) of the policy's next-token distribution. Where a backend only
  gave a top-k estimate, ``entropy_kind`` says ``"topk"`` (or ``"mixed"``): the value is
  that estimate, flagged, or NaN with ``require_full_entropy=True``.
- ``reference_drift`` (F3, mix/checkpoint axis): mean over rollouts of the mean per-token
  ``log p_M(y_t) - log p_M0(y_t)`` (teacher-forced). NaN, with
  ``reference_drift_available = False``, when any rollout of the failure lacks reference
  (or policy) log-probs — never approximated from other columns.

Ablation variants, reported beside the three and never substituted for them:
``modal_answer_share`` (share of the K rollouts giving the most common answer),
``fork_entropy`` (mean over rollouts of the rollout's largest per-token entropy: its
strongest "fork" token) and ``length_normalised_nll`` (mean over rollouts of the mean
per-token ``-log p_M``). ``failure_texts`` gives the text-baseline documents.

Each feature is a row of one table (``Feature``: name, axis, display name, why it can be
unavailable, and its function of the per-failure statistics), read by routing, the
analysis pipeline and the report; ``register_feature`` adds one. Which problems failed is
``fixable.failures.probe_status``, the definition the sampling protocol uses too.

Everything is vectorised over Arrow list columns and numpy (no Python loop per token or
per rollout).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fixable.errors import ConfigError, DataError
from fixable.failures import FAILURE_KEY, probe_status

logger = logging.getLogger(__name__)

AXES = ("retry", "temperature", "reference")  # the intervention axes of SPEC §3.4


@dataclass(frozen=True)
class Feature:
    """One row of the feature table: everything the rest of the package knows about a
    feature. Features, routing, the analysis pipeline and the report all read this table,
    so adding a feature is one row (``register_feature``) plus its ``compute`` function."""

    name: str  # its column in the failure-feature table
    axis: str  # the intervention axis it speaks for: "retry", "temperature" or "reference"
    display: str  # how figures and tables name it
    unavailable: str  # why a failure can lack it: the analysis' note when some do
    # the per-failure statistics (``failure_statistics``'s columns) → its value per failure;
    # NaN where it is unavailable
    compute: Callable[[pd.DataFrame], Any]
    ablation: bool = False  # a variant reported beside the signature features, never for them

    def __post_init__(self):
        if self.axis not in AXES:
            raise ConfigError(
                f"feature {self.name!r}: axis must be one of {', '.join(AXES)}, got {self.axis!r}"
            )


def _answer_dispersion(s: pd.DataFrame):
    k = s["n_probes"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        # + 0.0 turns the -0.0 of a single category into 0.0
        return np.where(k > 1, np.maximum(s["answer_entropy"] / np.log(k), 0.0), np.nan) + 0.0


_TABLE: dict[str, Feature] = {}


def register_feature(feature: Feature, *, replace: bool = False) -> Feature:
    """Add a row to the feature table (signature features first, then ablations, each in
    the order registered)."""
    if feature.name in _TABLE and not replace:
        raise ConfigError(f"feature {feature.name!r} is already in the feature table")
    _TABLE[feature.name] = feature
    return feature


def remove_feature(name: str) -> None:
    """Take a row out of the feature table (a plug-in's, or a test's)."""
    _TABLE.pop(name, None)


for _row in (
    Feature(
        "answer_dispersion",
        "retry",
        "answer dispersion (F1)",
        "K = 1 probe rollout: dispersion undefined",
        _answer_dispersion,
    ),
    Feature(
        "trajectory_uncertainty",
        "temperature",
        "trajectory uncertainty (F2, nats)",
        "missing or top-k-only entropies (require_full_entropy)",
        lambda s: s["mean_entropy"].where(s["entropy_usable"]),
    ),
    Feature(
        "reference_drift",
        "reference",
        "reference drift (F3, nats/token)",
        "no reference log-probs (ref_logprobs null: no reference model was scored)",
        lambda s: s["mean_drift"].where(s["reference_drift_available"]),
    ),
    Feature(
        "modal_answer_share",
        "retry",
        "modal-answer share",
        "no probe rollouts",
        lambda s: s["modal"] / s["n_probes"],
        ablation=True,
    ),
    Feature(
        "fork_entropy",
        "temperature",
        "fork-token entropy (nats)",
        "missing or top-k-only entropies (require_full_entropy)",
        lambda s: s["mean_max_entropy"].where(s["entropy_usable"]),
        ablation=True,
    ),
    Feature(
        "length_normalised_nll",
        "reference",
        "length-normalised NLL (nats/token)",
        "no policy log-probs",
        lambda s: s["mean_nll"],
        ablation=True,
    ),
):
    register_feature(_row)
del _row


def feature_table() -> tuple[Feature, ...]:
    """Every row: the signature features, then the ablations."""
    rows = list(_TABLE.values())
    return tuple([f for f in rows if not f.ablation] + [f for f in rows if f.ablation])


def feature(name: str) -> Feature:
    """The row of ``name``."""
    try:
        return _TABLE[name]
    except KeyError:
        raise DataError(
            f"unknown feature {name!r}; the feature table has {', '.join(_TABLE)}"
        ) from None


def signature_features() -> tuple[str, ...]:
    """The names of the signature features (F1-F3 and any registered beside them)."""
    return tuple(f.name for f in feature_table() if not f.ablation)


def ablation_features() -> tuple[str, ...]:
    """The names of the ablation variants."""
    return tuple(f.name for f in feature_table() if f.ablation)


def axis_feature(axis: str) -> str:
    """The (first) signature feature of an intervention axis: what the router reads for it."""
    for f in feature_table():
        if f.axis == axis and not f.ablation:
            return f.name
    raise DataError(f"no signature feature speaks for the {axis!r} axis")


def display_name(name: str) -> str:
    """How figures and tables name a feature (its own name when it is not in the table)."""
    row = _TABLE.get(name)
    return row.display if row is not None else name


# The built-in rows, for code that wants the names as constants; code that should see
# registered rows too calls signature_features() / ablation_features().
FEATURES = signature_features()
ABLATIONS = ablation_features()


def _feature_columns() -> tuple[str, ...]:
    # The columns of a failure-feature table after its (model, problem) key, in order; the
    # empty table and the computed one share them.
    return (
        "task",
        "n_probes",
        *signature_features(),
        *ablation_features(),
        "reference_drift_available",
        "entropy_kind",
        "n_distinct_answers",
        "no_answer_share",
        "mean_tokens",
    )


_NO_ANSWER = "\x00no answer"  # its own category; cannot collide with an extracted answer
_NEEDED = (
    "model",
    "problem_id",
    "phase",
    "correct",
    "answer",
    "status",
    "entropies",
    "entropy_kind",
    "policy_logprobs",
    "ref_logprobs",
)


def as_table(rollouts) -> pa.Table:
    """A pyarrow Table from a Table, a pandas DataFrame or a store ``Run``."""
    if isinstance(rollouts, pa.Table):
        return rollouts
    if isinstance(rollouts, pd.DataFrame):
        return pa.Table.from_pandas(rollouts, preserve_index=False)
    if hasattr(rollouts, "rollouts"):
        return rollouts.rollouts()
    raise DataError(
        f"expected rollouts as a pyarrow Table, DataFrame or Run, got {type(rollouts).__name__}"
    )


def _require(table: pa.Table, columns) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise DataError(
            f"rollouts table lacks column(s) {', '.join(missing)}; expected the columns of "
            "fixable.schema.ROLLOUTS"
        )


def list_stats(column) -> dict[str, np.ndarray]:
    """Per-row count, sum, mean and max of a list<float> column, vectorised.

    Null or empty lists give count 0 and NaN mean/max; ``null`` marks null lists."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n_rows = len(arr)
    null = np.asarray(arr.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
    flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(float)
    parents = pc.list_parent_indices(arr).to_numpy().astype(np.int64)
    sums = np.bincount(parents, weights=flat, minlength=n_rows)
    maxima = np.full(n_rows, np.nan)
    nonempty = lengths > 0
    if flat.size:
        # list_flatten keeps row order, so each non-empty row is one contiguous run
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])[nonempty]
        maxima[nonempty] = np.maximum.reduceat(flat, starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(nonempty, sums / np.maximum(lengths, 1), np.nan)
    return {"count": lengths, "sum": sums, "mean": means, "max": maxima, "null": null}


def probe_rows(rollouts, phase: str = "probe") -> pa.Table:
    """The valid probe rollouts: phase ``phase``, backend errors left out (they hold no sample)."""
    table = as_table(rollouts)
    _require(table, ("phase", "status"))
    mask = pc.and_(
        pc.equal(table["phase"], phase), pc.fill_null(pc.not_equal(table["status"], "error"), True)
    )
    return table.filter(mask)


def failed_problems(rollouts, phase: str = "probe") -> pd.DataFrame:
    """Per (model, problem) with a valid probe rollout: valid probe count (``n_probes``),
    correct count and ``failed`` — the one definition of a failure,
    ``fixable.failures.probe_status``, which the protocol uses too."""
    table = as_table(rollouts)
    _require(table, ("phase", "status"))
    status = probe_status(table.filter(pc.equal(table["phase"], phase)))
    status = status[status["n_probes"] > 0]
    return status[[*FAILURE_KEY, "n_probes", "n_correct", "failed"]].reset_index(drop=True)


def failure_features(
    rollouts, *, phase: str = "probe", require_full_entropy: bool = False
) -> pd.DataFrame:
    """One row per failed (model, problem) with F1-F3, their flags and the ablation variants."""
    table = probe_rows(rollouts, phase)
    _require(table, _NEEDED)
    status = failed_problems(table, phase)
    failures = status.loc[status["failed"], FAILURE_KEY]
    if failures.empty:
        return _empty_features()

    entropy = list_stats(table["entropies"])
    policy = list_stats(table["policy_logprobs"])
    reference = list_stats(table["ref_logprobs"])
    answers = table["answer"].to_pylist()
    kinds = table["entropy_kind"].to_pylist()
    rows = pd.DataFrame(
        {
            "model": table["model"].to_pylist(),
            "problem_id": table["problem_id"].to_pylist(),
            "task": table["task"].to_pylist() if "task" in table.column_names else None,
            "answer_key": [_NO_ANSWER if a is None else a for a in answers],
            "no_answer": [a is None for a in answers],
            "entropy_mean": entropy["mean"],
            "entropy_max": entropy["max"],
            "entropy_topk": [k == "topk" for k in kinds],
            "entropy_missing": entropy["null"] | (entropy["count"] == 0),
            "nll": -policy["mean"],
            "n_tokens": entropy["count"],
        }
    )
    # drift is linear in the per-token difference, so the per-rollout mean difference is
    # (Σ log p_M − Σ log p_M0) / n; it needs both lists, of the same length
    drift_ok = (
        (~policy["null"])
        & (~reference["null"])
        & (policy["count"] == reference["count"])
        & (policy["count"] > 0)
    )
    mismatched = (~policy["null"]) & (~reference["null"]) & (policy["count"] != reference["count"])
    if mismatched.any():
        logger.warning(
            "%d probe rollouts have policy and reference log-probs of different "
            "lengths; their reference drift is unavailable",
            int(mismatched.sum()),
        )
    with np.errstate(invalid="ignore", divide="ignore"):
        rows["drift"] = np.where(
            drift_ok, (policy["sum"] - reference["sum"]) / np.maximum(policy["count"], 1), np.nan
        )
    rows["drift_ok"] = drift_ok
    rows = rows.merge(failures, on=FAILURE_KEY, how="inner")

    out = _statistics(rows, require_full_entropy)
    for row in feature_table():
        out[row.name] = row.compute(out)
    n_flagged = int((out["entropy_kind"] != "full").sum())
    if n_flagged:
        logger.warning(
            "%d failures have top-k, mixed or missing entropies; their trajectory "
            "uncertainty is %s",
            n_flagged,
            "unavailable" if require_full_entropy else "a flagged estimate (entropy_kind)",
        )
    n_no_drift = int((~out["reference_drift_available"]).sum())
    if n_no_drift:
        logger.info(
            "%d failures have no reference log-probs: reference drift unavailable", n_no_drift
        )
    return out[list(_feature_columns())].reset_index()


def _statistics(rows: pd.DataFrame, require_full_entropy: bool) -> pd.DataFrame:
    """The per-failure statistics every feature's ``compute`` reads, indexed by
    (model, problem): ``n_probes``, ``no_answer_share``, ``mean_tokens``, the means over
    rollouts of the per-rollout ``mean_entropy``, ``mean_max_entropy``, ``mean_nll`` and
    ``mean_drift``, the answers' ``answer_entropy`` (nats), ``modal`` count and
    ``n_distinct_answers``, and the flags ``reference_drift_available``, ``entropy_kind``
    and ``entropy_usable``."""
    group = rows.groupby(FAILURE_KEY, sort=True)
    out = group.agg(
        task=("task", "first"),
        n_probes=("answer_key", "size"),
        no_answer_share=("no_answer", "mean"),
        mean_entropy=("entropy_mean", "mean"),
        mean_max_entropy=("entropy_max", "mean"),
        mean_nll=("nll", "mean"),
        mean_drift=("drift", "mean"),
        drift_rollouts=("drift_ok", "sum"),
        topk_rollouts=("entropy_topk", "sum"),
        entropy_missing=("entropy_missing", "sum"),
        mean_tokens=("n_tokens", "mean"),
    )

    counts = (
        rows.groupby(FAILURE_KEY + ["answer_key"], sort=True).size().rename("count").reset_index()
    )
    counts = counts.merge(out["n_probes"].reset_index(), on=FAILURE_KEY)
    p = counts["count"] / counts["n_probes"]
    counts["plogp"] = -p * np.log(p)
    answer_stats = counts.groupby(FAILURE_KEY, sort=True).agg(
        answer_entropy=("plogp", "sum"),
        modal=("count", "max"),
        n_distinct_answers=("count", "size"),
    )
    out = out.join(answer_stats)

    out["reference_drift_available"] = out["drift_rollouts"] == out["n_probes"]
    topk = out["topk_rollouts"].to_numpy()
    out["entropy_kind"] = np.where(
        topk == 0, "full", np.where(topk == out["n_probes"], "topk", "mixed")
    )
    missing_entropy = out["entropy_missing"] > 0
    out.loc[missing_entropy, "entropy_kind"] = "missing"
    out["entropy_usable"] = ~missing_entropy
    if require_full_entropy:
        out["entropy_usable"] &= out["entropy_kind"] == "full"
    return out


def _empty_features() -> pd.DataFrame:
    columns = [*FAILURE_KEY, *_feature_columns()]
    return pd.DataFrame(
        {
            c: pd.Series(
                dtype=object if c in ("model", "problem_id", "task", "entropy_kind") else float
            )
            for c in columns
        }
    )


def failure_texts(
    rollouts, failures: pd.DataFrame | None = None, *, phase: str = "probe"
) -> pd.Series:
    """The text-baseline document of each failure: its failed probe completions joined by
    newlines, indexed by (model, problem)."""
    table = probe_rows(rollouts, phase)
    frame = pd.DataFrame(
        {
            "model": table["model"].to_pylist(),
            "problem_id": table["problem_id"].to_pylist(),
            "sample_index": table["sample_index"].to_pylist()
            if "sample_index" in table.column_names
            else 0,
            "text": [t or "" for t in table["text"].to_pylist()],
        }
    )
    if failures is None:
        status = failed_problems(table, phase)
        failures = status.loc[status["failed"], FAILURE_KEY]
    frame = frame.merge(failures[FAILURE_KEY], on=FAILURE_KEY).sort_values(
        FAILURE_KEY + ["sample_index"]
    )
    return frame.groupby(FAILURE_KEY, sort=True)["text"].agg("\n".join)


def probe_subsets(rollouts, *, phase: str = "probe") -> tuple[str, list[tuple[str, pa.Table]]]:
    """Independent probe subsets for stability across probe seeds.

    When the rollouts carry a ``run`` column naming two or more runs with probes, each run
    is a probe seed. Otherwise the K probes of every problem are split into two halves by
    the parity of ``sample_index`` (K/2 rollouts each): the returned ``how`` says which."""
    table = probe_rows(rollouts, phase)
    if "run" in table.column_names:
        runs = sorted(set(table["run"].to_pylist()))
        if len(runs) >= 2:
            return "probe seeds (one per run)", [
                (str(r), table.filter(pc.equal(table["run"], r))) for r in runs
            ]
    parity = pc.bit_wise_and(table["sample_index"].cast(pa.int64()), 1)
    even = table.filter(pc.equal(parity, 0))
    odd = table.filter(pc.equal(parity, 1))
    return "halves of the K probes (even/odd sample_index): only one probe seed", [
        ("even", even),
        ("odd", odd),
    ]
