"""What a failure is, defined once (SPEC §3): a (model, problem) none of whose valid
probe rollouts is correct, with at least one valid rollout. A rollout the backend failed
to produce (status ``"error"``) is no attempt: it neither counts as wrong nor as a probe.

The protocol (``fixable.protocol``: which problems get a rescue sweep) and the features
(``fixable.features``: which problems have a failure signature, and the analysis built on
them) both call ``probe_status``, so the two can never disagree on what failed.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

FAILURE_KEY = ["model", "problem_id"]
STATUS_COLUMNS = ["n_rollouts", "n_errors", "n_probes", "n_correct", "failed"]


def probe_status(probes: pa.Table) -> pd.DataFrame:
    """Per (model, problem) of the probe rollouts ``probes`` (error rows included or not):

    ``n_rollouts`` (every row), ``n_errors`` (backend errors), ``n_probes`` (valid
    rollouts), ``n_correct`` (correct valid rollouts) and ``failed`` (``n_correct == 0``
    and ``n_probes > 0``), sorted by the key."""
    error = (
        pc.fill_null(pc.equal(probes["status"], "error"), False).to_numpy(zero_copy_only=False)
        if "status" in probes.column_names
        else np.zeros(probes.num_rows, bool)
    )
    correct = pc.fill_null(probes["correct"], False).to_numpy(zero_copy_only=False)
    error = np.asarray(error, dtype=bool)
    frame = pd.DataFrame(
        {
            "model": probes["model"].to_pylist(),
            "problem_id": probes["problem_id"].to_pylist(),
            "error": error,
            "valid": ~error,
            "correct": np.asarray(correct, dtype=bool) & ~error,
        }
    )
    grouped = frame.groupby(FAILURE_KEY, sort=True).agg(
        n_rollouts=("error", "size"),
        n_errors=("error", "sum"),
        n_probes=("valid", "sum"),
        n_correct=("correct", "sum"),
    )
    grouped = grouped.astype("int64")
    grouped["failed"] = (grouped["n_correct"] == 0) & (grouped["n_probes"] > 0)
    return grouped.reset_index()
