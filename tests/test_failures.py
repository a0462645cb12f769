"""One definition of a failure: the protocol (which problems get a rescue sweep, read from
the store) and the features (which problems have a signature, read from a table) agree on
every mix of correct, wrong, errored and null-verdict probe rollouts, because both call
``fixable.failures.probe_status``. Also the store's keyword filters."""

from __future__ import annotations

import pytest

from analysis_tables import rows_table
from fixable.errors import StoreError
from fixable.failures import probe_status
from fixable.features import failed_problems as features_failed
from fixable.protocol import failed_problems as protocol_failed
from fixable.protocol import probe_outcomes
from fixable.store import Run

K = 4
# problem → the K probe rollouts' (correct, status)
CASES = {
    "all-wrong": [(False, "failed")] * K,
    "one-right": [(True, "correct")] + [(False, "failed")] * (K - 1),
    "all-errors": [(False, "error")] * K,
    "wrong-and-errors": [(False, "error")] * 2 + [(False, "failed")] * 2,
    "right-and-errors": [(False, "error")] * 3 + [(True, "correct")],
    "null-verdicts": [(None, "failed")] * K,
    "null-status": [(False, None)] * K,
}


def _rows(model="m"):
    rows = []
    for pid, outcomes in CASES.items():
        for i, (correct, status) in enumerate(outcomes):
            rows.append(
                {
                    "model": model,
                    "problem_id": pid,
                    "sample_index": i,
                    "seed": i,
                    "correct": correct,
                    "status": status,
                    "answer": None if status == "error" else str(i),
                }
            )
    # a rescue rollout that is correct must not make a probe failure a success
    rows.append(
        {"model": model, "problem_id": "all-wrong", "phase": "rescue", "correct": True}
        | {"setting": "temperature(T=0.3)", "status": "correct", "sample_index": 0}
    )
    return rows


def test_protocol_and_features_agree_on_what_failed(tmp_path):
    table = rows_table(_rows())
    run = Run.create(tmp_path / "run")
    with run.writer() as writer:
        writer.extend(table.to_pylist())

    from_store = protocol_failed(run, "m", k=K)
    status = features_failed(table)
    from_table = sorted(status.loc[status["failed"], "problem_id"])
    assert sorted(from_store) == from_table
    assert set(from_table) == {"all-wrong", "wrong-and-errors", "null-verdicts", "null-status"}
    # a problem whose probes all errored is no attempt: neither failed nor judged solved
    assert "all-errors" not in set(status["problem_id"])
    outcomes = probe_outcomes(run, "m", k=K)
    assert outcomes["all-errors"] == {"problem_id": "all-errors", "n": 4, "correct": 0, "errors": 4}
    # fewer than K probes: not judged yet
    with pytest.raises(StoreError, match="fewer than 5 probe rollouts"):
        protocol_failed(run, "m", k=K + 1)


def test_probe_status_counts(tmp_path):
    status = probe_status(rows_table(_rows())).set_index("problem_id")
    row = status.loc["right-and-errors"]
    assert (row["n_rollouts"], row["n_errors"], row["n_probes"], row["n_correct"]) == (
        5 - 1,
        3,
        1,
        1,
    )
    assert not row["failed"]
    assert probe_status(rows_table(_rows())[:0]).empty


def test_keyword_filters_select_like_sql(tmp_path):
    table = rows_table(_rows("a") + _rows("b's"))
    run = Run.create(tmp_path / "run")
    with run.writer() as writer:
        writer.extend(table.to_pylist())
    assert run.rollouts(model="b's").num_rows == len(_rows())
    probes = run.rollouts(model="a", phase="probe", problem_id=["all-wrong", "one-right"])
    assert probes.num_rows == 2 * K
    assert run.rollouts(exclude={"phase": "probe"}).num_rows == 2
    keys = run.keys(model="a", setting="temperature(T=0.3)")
    assert keys == {("a", "all-wrong", "rescue", "temperature(T=0.3)", 0)}
    assert run.rollouts(problem_id=[]).num_rows == 0
    with pytest.raises(StoreError, match="unknown rollout column 'modle'"):
        run.rollouts(modle="a")
