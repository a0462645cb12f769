"""The failure features at their edges: K = 1, 2 and 3 in answer dispersion, partly missing
entropies, empty completions, top-k entropies, and failures that are not failures.

Expected values are closed forms or direct loops over the rows written in the test, never
the output of ``failure_features`` itself. Token-level lists are stored as float32, hence
the 1e-6 tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from analysis_tables import probe, rows_table
from fixable.errors import DataError
from fixable.features import (
    as_table,
    failed_problems,
    failure_features,
    failure_texts,
    list_stats,
    probe_rows,
    probe_subsets,
)

FEATURE_COLUMNS = (  # SPEC §3.4 and the flags beside them, in the table's order
    "task",
    "n_probes",
    "answer_dispersion",
    "trajectory_uncertainty",
    "reference_drift",
    "modal_answer_share",
    "fork_entropy",
    "length_normalised_nll",
    "reference_drift_available",
    "entropy_kind",
    "n_distinct_answers",
    "no_answer_share",
    "mean_tokens",
)


def _one(rows, problem: str = "p", **kwargs):
    f = failure_features(rows_table(rows), **kwargs)
    return f.set_index("problem_id").loc[problem]


def _normalised_entropy(answers: list) -> float:
    """Shannon entropy of the answers (None its own category) / log K, by a direct loop."""
    k = len(answers)
    counts: dict = {}
    for a in answers:
        counts[("none",) if a is None else a] = counts.get(("none",) if a is None else a, 0) + 1
    h = 0.0
    for c in counts.values():
        h -= c / k * math.log(c / k)
    return h / math.log(k)


# ── answer dispersion: K = 1 is undefined, K = 2 is not ───────────────────────────────


@pytest.mark.parametrize(
    "answers, expected",
    [
        (["a", "b"], 1.0),  # two different wrong answers: log 2 / log 2
        (["a", "a"], 0.0),
        (["a", None], 1.0),  # "no answer" is a category of its own
        ([None, None], 0.0),
        (["a", "a", "b"], (math.log(3) - 2 / 3 * math.log(2)) / math.log(3)),
        (["a", "b", None], 1.0),
    ],
)
def test_dispersion_with_two_and_three_probes(answers, expected):
    row = _one(probe("p", answers))
    assert row["n_probes"] == len(answers)
    assert row["answer_dispersion"] == pytest.approx(expected, abs=1e-6)
    assert row["answer_dispersion"] == pytest.approx(_normalised_entropy(answers), abs=1e-6)
    assert row["n_distinct_answers"] == len({("none",) if a is None else a for a in answers})


def test_dispersion_of_one_probe_is_undefined_and_of_two_is_defined():
    assert math.isnan(_one(probe("p", ["a"]))["answer_dispersion"])
    assert _one(probe("p", ["a", "b"]))["answer_dispersion"] == 1.0


def test_a_problem_with_one_correct_probe_is_not_a_failure():
    rows = probe("solved", ["1", "2"], correct=[False, True]) + probe("failed", ["1", "2"])
    features = failure_features(rows_table(rows))
    assert features["problem_id"].tolist() == ["failed"]


# ── trajectory uncertainty: one missing rollout is enough to make it unavailable ───────


ENTROPIES = [[0.2, 0.4], [1.0], [0.3, 0.3, 0.6], [2.0, 0.0]]


def test_uncertainty_is_the_mean_of_per_rollout_means_when_nothing_is_missing():
    row = _one(probe("p", ["a"] * 4, entropies=ENTROPIES))
    expected = sum(sum(e) / len(e) for e in ENTROPIES) / len(ENTROPIES)
    assert row["trajectory_uncertainty"] == pytest.approx(expected, abs=1e-6)
    assert row["fork_entropy"] == pytest.approx(
        sum(max(e) for e in ENTROPIES) / len(ENTROPIES), abs=1e-6
    )
    assert row["entropy_kind"] == "full"


@pytest.mark.parametrize("n_missing", [1, 2, 4])
@pytest.mark.parametrize("missing_as", [None, []], ids=["null", "empty"])
def test_partly_missing_entropies_make_uncertainty_unavailable(n_missing, missing_as):
    entropies = [missing_as] * n_missing + ENTROPIES[n_missing:]
    row = _one(probe("p", ["a"] * 4, entropies=entropies))
    assert math.isnan(row["trajectory_uncertainty"]) and math.isnan(row["fork_entropy"])
    assert row["entropy_kind"] == "missing"


@pytest.mark.parametrize(
    "kinds, expected_kind",
    [(["full"] * 4, "full"), (["topk"] * 4, "topk"), (["topk"] + ["full"] * 3, "mixed")],
)
def test_topk_entropies_are_flagged_and_dropped_on_request(kinds, expected_kind):
    rows = probe("p", ["a"] * 4, entropies=ENTROPIES)
    for row, kind in zip(rows, kinds, strict=True):
        row["entropy_kind"] = kind
    flagged = _one(rows)
    assert flagged["entropy_kind"] == expected_kind
    assert not math.isnan(flagged["trajectory_uncertainty"])
    strict = _one(rows, require_full_entropy=True)
    assert math.isnan(strict["trajectory_uncertainty"]) == (expected_kind != "full")


# ── reference drift: empty completions have none ──────────────────────────────────────


LOGPROBS = [[-1.0, -2.0], [-0.5], [-3.0, -1.0, -2.0], [-0.1, -0.1]]
REFERENCE = [[-1.5, -2.5], [-0.5], [-1.0, -1.0, -1.0], [-0.3, -0.2]]


def test_drift_is_the_mean_per_token_log_ratio_by_a_direct_loop():
    row = _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, ref_logprobs=REFERENCE))
    per_rollout = [
        sum(p - r for p, r in zip(ps, rs, strict=True)) / len(ps)
        for ps, rs in zip(LOGPROBS, REFERENCE, strict=True)
    ]
    assert row["reference_drift"] == pytest.approx(np.mean(per_rollout), abs=1e-6)
    assert bool(row["reference_drift_available"])


@pytest.mark.parametrize("n_empty", [1, 4])
def test_empty_completions_have_no_drift_not_a_drift_of_zero(n_empty):
    policy = [[]] * n_empty + LOGPROBS[n_empty:]
    reference = [[]] * n_empty + REFERENCE[n_empty:]
    entropies = [[]] * n_empty + ENTROPIES[n_empty:]
    row = _one(
        probe("p", ["a"] * 4, policy_logprobs=policy, ref_logprobs=reference, entropies=entropies)
    )
    assert math.isnan(row["reference_drift"])
    assert not bool(row["reference_drift_available"])


def test_one_rollout_without_reference_makes_the_failure_drift_unavailable():
    reference = [None] + REFERENCE[1:]
    row = _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, ref_logprobs=reference))
    assert math.isnan(row["reference_drift"]) and not bool(row["reference_drift_available"])


def test_length_normalised_nll_and_mean_tokens_by_a_direct_loop():
    row = _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, entropies=ENTROPIES))
    assert row["length_normalised_nll"] == pytest.approx(
        np.mean([-sum(ps) / len(ps) for ps in LOGPROBS]), abs=1e-6
    )
    assert row["mean_tokens"] == pytest.approx(np.mean([len(e) for e in ENTROPIES]))


# ── list statistics, the empty table, failure texts and probe subsets ─────────────────


def test_list_stats_of_a_chunked_column_match_a_direct_loop():
    rows = [[1.0, 2.0], [3.0], None, [4.0, 6.0, 5.0], []]
    column = pa.chunked_array(
        [pa.array(rows[:2], pa.list_(pa.float32())), pa.array(rows[2:], pa.list_(pa.float32()))]
    )
    s = list_stats(column)
    assert s["count"].tolist() == [len(r or []) for r in rows]
    assert s["null"].dtype == bool and s["null"].tolist() == [r is None for r in rows]
    for i, r in enumerate(rows):
        if r:
            assert s["sum"][i] == sum(r) and s["mean"][i] == sum(r) / len(r)
            assert s["max"][i] == max(r)
        else:
            assert math.isnan(s["mean"][i]) and math.isnan(s["max"][i])


def test_a_null_token_value_makes_its_row_nan_not_a_silent_drop():
    s = list_stats(pa.array([[1.0, None], [2.0]], pa.list_(pa.float32())))
    assert math.isnan(s["mean"][0]) and math.isnan(s["max"][0])
    assert s["mean"][1] == 2.0 and s["count"].tolist() == [2, 1]


def test_no_failures_give_an_empty_table_with_every_column_and_its_type():
    solved = failure_features(rows_table(probe("p", ["1", "2"], correct=[True, False])))
    assert solved.empty
    assert list(solved.columns) == ["model", "problem_id", *FEATURE_COLUMNS]
    text_columns = {"model", "problem_id", "task", "entropy_kind"}
    for column in solved.columns:
        expected = object if column in text_columns else float
        assert solved[column].dtype == np.dtype(expected), column


def test_failure_texts_join_in_sample_order_only_for_failures_of_the_phase():
    rows = (
        probe("z", ["1", "2", "3"])
        + probe("a", ["1", "2"])
        + probe("solved", ["1", "2"], correct=[True, False])
    )
    texts = ["c", "a", "b", "first", None, "s", "t"]
    for row, text, index in zip(rows, texts, [2, 0, 1, 0, 1, 0, 1], strict=True):
        row["text"], row["sample_index"] = text, index
    table = rows_table(rows)
    texts = failure_texts(table)
    assert texts.index.tolist() == [("m", "a"), ("m", "z")]  # sorted, solved left out
    assert texts.loc[("m", "z")] == "a\nb\nc"  # by sample_index, not row order
    assert texts.loc[("m", "a")] == "first\n"  # a missing text is empty
    without_index = failure_texts(table.drop(["sample_index"]))
    assert sorted(without_index.loc[("m", "z")].split("\n")) == ["a", "b", "c"]
    assert failure_texts(table, phase="rescue").empty  # no rollouts of that phase
    chosen = failure_texts(table, pd.DataFrame({"model": ["m"], "problem_id": ["z"]}))
    assert chosen.index.tolist() == [("m", "z")]


def test_probe_subsets_split_by_run_or_by_sample_parity():
    table = rows_table(probe("p", ["1", "2", "3", "4", "5"]))
    how, subsets = probe_subsets(table)
    assert how.startswith("halves of the K probes")
    assert [name for name, _ in subsets] == ["even", "odd"]
    assert [s["sample_index"].to_pylist() for _, s in subsets] == [[0, 2, 4], [1, 3]]
    runs = table.append_column("run", pa.array(["b", "a", "b", "a", "b"]))
    how, subsets = probe_subsets(runs)
    assert how == "probe seeds (one per run)"
    assert [(n, s["sample_index"].to_pylist()) for n, s in subsets] == [
        ("a", [1, 3]),
        ("b", [0, 2, 4]),
    ]
    one_run = table.append_column("run", pa.array(["a"] * 5))
    assert probe_subsets(one_run)[0].startswith("halves")
    assert probe_subsets(table, phase="rescue")[1][0][1].num_rows == 0


def test_rows_come_out_sorted_by_model_and_problem_with_their_task():
    rows = probe("z", ["1", "2"], model="m2") + probe("a", ["1", "1"], model="m2")
    rows += probe("b", ["1", None, "3", "1"], model="m1")
    for row in rows:
        row["task"] = f"task-{row['problem_id']}"
    f = failure_features(rows_table(rows))
    assert list(zip(f["model"], f["problem_id"], strict=True)) == [
        ("m1", "b"),
        ("m2", "a"),
        ("m2", "z"),
    ]
    assert f["task"].tolist() == ["task-b", "task-a", "task-z"]
    assert f["answer_dispersion"].tolist() == pytest.approx(
        [_normalised_entropy(["1", None, "3", "1"]), 0.0, 1.0]
    )
    assert f["no_answer_share"].tolist() == [0.25, 0.0, 0.0]  # 1 of 4 gave no answer
    assert f["modal_answer_share"].tolist() == [0.5, 1.0, 0.5]
    no_task = failure_features(rows_table(rows).drop(["task"]))
    assert no_task["task"].isna().all() and len(no_task) == 3


def test_features_of_another_phase_use_that_phase_only():
    probes = probe("p", ["1", "2"])  # failed at probe
    rescues = probe("p", ["3", "3", "3"], correct=[False, True, False])  # solved at rescue
    rescues += probe("q", ["4", "4"])
    for row in rescues:
        row["phase"] = "rescue"
    table = rows_table(probes + rescues)
    assert failure_features(table)["problem_id"].tolist() == ["p"]
    rescue = failure_features(table, phase="rescue")
    assert rescue["problem_id"].tolist() == ["q"] and rescue["n_probes"].tolist() == [2]


def test_mismatched_reference_lengths_are_counted_in_one_warning(caplog):
    policy = [[-1.0, -2.0], [-0.5], [-3.0], [-0.1]]
    reference = [[-1.0], [-0.5], [-3.0, -1.0], None]  # two mismatched, one missing
    with caplog.at_level("WARNING", logger="fixable.features"):
        row = _one(probe("p", ["a"] * 4, policy_logprobs=policy, ref_logprobs=reference))
    assert math.isnan(row["reference_drift"])
    messages = [r.getMessage() for r in caplog.records if "different lengths" in r.getMessage()]
    assert messages == [
        "2 probe rollouts have policy and reference log-probs of different lengths; "
        "their reference drift is unavailable"
    ]
    caplog.clear()
    with caplog.at_level("WARNING", logger="fixable.features"):
        _one(probe("p", ["a"] * 4, policy_logprobs=LOGPROBS, ref_logprobs=REFERENCE))
    assert not [r for r in caplog.records if "different lengths" in r.getMessage()]


def test_dispersion_of_one_repeated_answer_is_a_positive_zero():
    value = _one(probe("p", ["a", "a", "a"]))["answer_dispersion"]
    assert value == 0.0 and math.copysign(1.0, value) == 1.0  # not -0.0


def test_flagged_entropies_and_missing_references_are_logged_with_their_counts(caplog):
    topk = probe("t", ["a", "b"], entropy_kind="topk")
    full = probe("f", ["a", "b"])
    no_ref = probe("n", ["a", "b"], ref_logprobs=[None, None])
    table = rows_table(topk + full + no_ref)
    with caplog.at_level("INFO", logger="fixable.features"):
        failure_features(table)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "1 failures have top-k, mixed or missing entropies; their trajectory uncertainty is "
        "a flagged estimate (entropy_kind)",
        "1 failures have no reference log-probs: reference drift unavailable",
    ]
    caplog.clear()
    with caplog.at_level("INFO", logger="fixable.features"):
        failure_features(table, require_full_entropy=True)
    assert [r.getMessage() for r in caplog.records][0] == (
        "1 failures have top-k, mixed or missing entropies; their trajectory uncertainty is "
        "unavailable"
    )
    caplog.clear()
    with caplog.at_level("INFO", logger="fixable.features"):
        failure_features(rows_table(full))
    assert caplog.records == []  # nothing flagged, nothing said


# ── inputs: tables, frames, runs, missing columns, unknown correctness ────────────────


def test_rollouts_come_as_a_table_a_frame_or_anything_with_rollouts():
    table = rows_table(probe("p", ["1", "2"]))
    frame = table.to_pandas()
    frame.index = [10, 11]  # an index is not a column
    from_frame = failure_features(frame)
    assert "__index_level_0__" not in as_table(frame).column_names
    assert as_table(frame).num_rows == 2 and from_frame["problem_id"].tolist() == ["p"]

    class RunLike:
        def rollouts(self):
            return table

    assert as_table(RunLike()) is table
    with pytest.raises(DataError) as caught:
        as_table([1, 2])
    assert str(caught.value) == "expected rollouts as a pyarrow Table, DataFrame or Run, got list"


def test_missing_columns_are_all_named():
    table = rows_table(probe("p", ["1"])).drop(["entropies", "ref_logprobs"])
    with pytest.raises(DataError) as caught:
        failure_features(table)
    assert str(caught.value) == (
        "rollouts table lacks column(s) entropies, ref_logprobs; expected the columns of "
        "fixable.schema.ROLLOUTS"
    )


def test_unknown_correctness_counts_as_not_correct_and_problems_come_sorted():
    rows = probe("z", ["1", "2"]) + probe("a", ["1", "2"], correct=[False, True])
    rows[0]["correct"] = None  # not graded: not a success
    rescue_rows = probe("y", ["1"])
    rescue_rows[0]["phase"] = "rescue"
    table = rows_table(rows + rescue_rows)
    status = failed_problems(table)
    assert list(status.columns) == ["model", "problem_id", "n_probes", "n_correct", "failed"]
    assert status["problem_id"].tolist() == ["a", "z"]
    assert status["n_correct"].tolist() == [1, 0] and status["failed"].tolist() == [False, True]
    assert status["n_probes"].tolist() == [2, 2]
    assert failed_problems(table, phase="rescue")["problem_id"].tolist() == ["y"]


def test_probe_rows_keep_rows_without_a_status_and_drop_backend_errors():
    rows = probe("p", ["1", "2", "3"])
    rows[1]["status"] = None  # no status recorded: still a sample
    rows[2]["status"] = "error"
    rescue_row = probe("p", ["4"])[0] | {"phase": "rescue", "sample_index": 9}
    table = rows_table([*rows, rescue_row])
    assert probe_rows(table)["sample_index"].to_pylist() == [0, 1]  # "probe" by default
    assert probe_rows(table, "rescue")["sample_index"].to_pylist() == [9]


def test_failure_texts_of_another_phase_use_that_phase_failures():
    rows = probe("p", ["1", "2"])
    for row, text in zip(rows, ["x", "y"], strict=True):
        row |= {"phase": "rescue", "text": text}
    table = rows_table(rows + probe("q", ["1"]))
    assert failure_texts(table, phase="rescue").to_dict() == {("m", "p"): "x\ny"}
