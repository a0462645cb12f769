"""The failure features: exact values on hand-built tables, flags for missing inputs,
agreement with a direct per-rollout computation, and recovery of planted signatures."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from analysis_tables import probe, rows_table
from fixable.analysis.synthetic import planted_rollouts
from fixable.errors import DataError
from fixable.features import (
    ABLATIONS,
    FEATURES,
    failed_problems,
    failure_features,
    failure_texts,
    list_stats,
    probe_subsets,
)


def _one(table, problem="p"):
    f = failure_features(table)
    return f.set_index("problem_id").loc[problem]


def test_dispersion_is_normalised_entropy_with_no_answer_as_a_category():
    same = rows_table(probe("same", ["1"] * 8))
    distinct = rows_table(probe("distinct", [str(i) for i in range(8)]))
    pairs = rows_table(probe("pairs", ["a", "a", "b", "b", "c", "c", "d", "d"]))
    none = rows_table(probe("none", [None] * 4 + ["1"] * 4))
    assert _one(same, "same")["answer_dispersion"] == 0.0
    assert _one(distinct, "distinct")["answer_dispersion"] == pytest.approx(1.0)
    assert _one(pairs, "pairs")["answer_dispersion"] == pytest.approx(math.log(4) / math.log(8))
    row = _one(none, "none")
    # two categories of four ("no answer" and "1"): log 2 / log 8
    assert row["answer_dispersion"] == pytest.approx(math.log(2) / math.log(8))
    assert row["no_answer_share"] == 0.5
    assert row["modal_answer_share"] == 0.5
    assert _one(same, "same")["modal_answer_share"] == 1.0


def test_features_match_a_direct_per_rollout_computation():
    rng = np.random.default_rng(3)
    rows = []
    for i in range(5):
        n = int(rng.integers(1, 12))
        rows.append(
            {
                "problem_id": "p",
                "answer": str(i % 2),
                "entropies": list(rng.random(n)),
                "policy_logprobs": list(-rng.random(n)),
                "ref_logprobs": list(-rng.random(n)),
            }
        )
    table = rows_table(rows)
    row = _one(table)
    ent = [np.mean(r["entropies"]) for r in rows]
    drift = [
        np.mean(
            np.array(r["policy_logprobs"], dtype=np.float32)
            - np.array(r["ref_logprobs"], dtype=np.float32)
        )
        for r in rows
    ]
    nll = [-np.mean(np.array(r["policy_logprobs"], dtype=np.float32)) for r in rows]
    fork = [np.max(np.array(r["entropies"], dtype=np.float32)) for r in rows]
    assert row["trajectory_uncertainty"] == pytest.approx(np.mean(ent), rel=1e-5)
    assert row["reference_drift"] == pytest.approx(np.mean(drift), rel=1e-5)
    assert row["length_normalised_nll"] == pytest.approx(np.mean(nll), rel=1e-5)
    assert row["fork_entropy"] == pytest.approx(np.mean(fork), rel=1e-5)
    assert row["n_probes"] == 5


def test_list_stats_handles_nulls_and_empty_lists():
    arr = pa.array([[1.0, 3.0], None, [], [5.0]], type=pa.list_(pa.float32()))
    s = list_stats(arr)
    assert list(s["count"]) == [2, 0, 0, 1]
    assert (
        s["mean"][0] == 2.0
        and np.isnan(s["mean"][1])
        and np.isnan(s["mean"][2])
        and s["mean"][3] == 5.0
    )
    assert s["max"][0] == 3.0 and np.isnan(s["max"][2]) and s["max"][3] == 5.0
    assert list(s["null"]) == [False, True, False, False]


def test_only_failed_problems_and_no_backend_errors():
    solved = probe("solved", ["1", "2"], correct=[False, True])
    failed = probe("failed", ["1", "2"])
    errored = [{"problem_id": "failed", "status": "error", "answer": None, "sample_index": 9}]
    table = rows_table(solved + failed + errored)
    f = failure_features(table)
    assert list(f["problem_id"]) == ["failed"]
    assert f.iloc[0]["n_probes"] == 2  # the backend error holds no sample
    status = failed_problems(table).set_index("problem_id")
    assert not status.loc["solved", "failed"] and status.loc["failed", "failed"]


def test_missing_reference_makes_drift_unavailable_never_approximated():
    table = rows_table(probe("p", ["1", "2"], ref_logprobs=[[-1.0], None]))
    row = _one(table)
    assert not row["reference_drift_available"]
    assert math.isnan(row["reference_drift"])
    assert not math.isnan(row["trajectory_uncertainty"])


def test_mismatched_reference_lengths_are_unavailable():
    table = rows_table(
        [
            {
                "answer": "1",
                "entropies": [0.1, 0.2],
                "policy_logprobs": [-1.0, -1.0],
                "ref_logprobs": [-1.0],
            }
        ]
    )
    assert not _one(table)["reference_drift_available"]


def test_topk_entropies_are_flagged_or_unavailable_on_request():
    table = rows_table(probe("p", ["1", "2"], entropy_kind="topk"))
    assert _one(table)["entropy_kind"] == "topk"
    assert not math.isnan(_one(table)["trajectory_uncertainty"])
    strict = failure_features(table, require_full_entropy=True).iloc[0]
    assert math.isnan(strict["trajectory_uncertainty"]) and math.isnan(strict["fork_entropy"])
    mixed = rows_table(
        [{"answer": "1", "entropy_kind": "topk"}, {"answer": "2", "entropy_kind": "full"}]
    )
    assert _one(mixed)["entropy_kind"] == "mixed"


def test_a_single_probe_has_undefined_dispersion():
    assert math.isnan(_one(rows_table(probe("p", ["1"])), "p")["answer_dispersion"])


def test_missing_columns_name_them():
    table = rows_table(probe("p", ["1"])).drop(["entropies"])
    with pytest.raises(DataError, match="entropies"):
        failure_features(table)


def test_texts_and_probe_halves():
    table = rows_table(probe("p", ["1", "2", "3", "4"], text="x"))
    assert failure_texts(table).loc[("m", "p")] == "x\nx\nx\nx"
    how, subsets = probe_subsets(table)
    assert "halves" in how and [s.num_rows for _, s in subsets] == [2, 2]
    two_runs = table.append_column("run", pa.array(["a", "a", "b", "b"]))
    how, subsets = probe_subsets(two_runs)
    assert "probe seeds" in how and [name for name, _ in subsets] == ["a", "b"]


def test_planted_signatures_are_recovered_from_synthetic_rollouts():
    table, truth = planted_rollouts(
        ["gpt-rl-s0"], n_failures=50, n_solved=5, feature_noise=0.05, seed=1
    )
    f = failure_features(table)
    assert len(f) == 50  # the solved problems are not failures
    kind = f.apply(lambda r: truth["kind"][(r["model"], r["problem_id"])], axis=1)
    means = f.groupby(kind.to_numpy())[list(FEATURES)].mean()
    assert means.loc["resamplable", "answer_dispersion"] == pytest.approx(1.0)
    assert (
        means.loc["steer-hot", "answer_dispersion"]
        < 0.25
        < means.loc["structural", "answer_dispersion"]
    )
    assert means["reference_drift"].idxmax() == "steer-mix"
    assert means["trajectory_uncertainty"].idxmax() == "steer-cold"
    assert means["trajectory_uncertainty"].idxmin() == "steer-hot"
    assert set(ABLATIONS) <= set(f.columns)
    no_ref, _ = planted_rollouts(["gpt-rl-s0"], n_failures=5, with_reference=False)
    assert not failure_features(no_ref)["reference_drift_available"].any()
