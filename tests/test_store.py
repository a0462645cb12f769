"""The run store: shards round-trip, corrupt shards are quarantined, migrations upgrade."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fixable import schema, store
from fixable.errors import StoreError
from fixable.store import MIGRATIONS, Migration, Run
from fixable.types import Problem


def rollout_row(
    problem_id: str,
    index: int,
    *,
    model: str = "m",
    phase: str = "probe",
    setting: str = "retry",
    correct: bool = False,
) -> dict:
    ids = [3 + (index + j) % 40 for j in range(5 + index % 3)]
    return {
        "model": model,
        "task": "chains",
        "problem_id": problem_id,
        "phase": phase,
        "intervention": setting.split("(")[0],
        "setting": setting,
        "params": "{}",
        "sample_index": index,
        "seed": 1000 + index,
        "text": f"text {problem_id} {index}",
        "answer": "1234" if correct else None,
        "correct": correct,
        "chain_correct": None,
        "status": "passed" if correct else "no_answer",
        "reason": "",
        "finish_reason": "stop",
        "token_ids": ids,
        "logprobs": [-0.5] * len(ids),
        "entropies": [1.0] * len(ids),
        "entropy_kind": "full",
        "policy_logprobs": [-0.25] * len(ids),
        "ref_logprobs": None,
        "n_tokens": len(ids),
        "cost_tokens": float(len(ids)),
        "time_s": 0.01,
        "worker": "w",
    }


def make_run(tmp_path, n_problems=4, n_samples=6, flush_every=8):
    run = Run.create(tmp_path / "run")
    with run.writer(flush_every=flush_every, worker="w1") as w:
        for p in range(n_problems):
            for i in range(n_samples):
                w.append(rollout_row(f"p{p}", i, correct=(p == 0 and i == 2)))
    return run


def test_round_trip_views_keys_and_atomic_names(tmp_path):
    run = make_run(tmp_path)
    shards = run.shard_paths()
    assert len(shards) == 3  # 24 rows, a shard every 8
    assert all(s.name.startswith("w1-") for s in shards)
    assert not list((run.path / "rollouts").glob(".*"))  # no temporary file left behind
    meta = pq.read_schema(shards[0]).metadata
    assert meta[store.VERSION_KEY] == str(schema.SCHEMA_VERSION).encode()

    table = run.rollouts()
    assert table.schema == schema.ROLLOUTS
    assert table.num_rows == 24
    assert table.column("token_ids").to_pylist()[1] == rollout_row("p0", 1)["token_ids"]
    assert len(run.keys()) == 24
    present = run.keys()
    assert ("m", "p0", "probe", "retry", 5) in present
    assert run.keys("problem_id = 'p1'") == {("m", "p1", "probe", "retry", i) for i in range(6)}
    assert run.rollouts(where="correct").column("problem_id").to_pylist() == ["p0"]

    con = run.connect()
    assert con.execute("SELECT count(*) FROM rollouts WHERE phase = 'probe'").fetchone()[0] == 24
    assert con.execute("SELECT count(*) FROM problems").fetchone()[0] == 0
    counts = run.counts().to_pylist()
    assert counts == [
        {
            "model": "m",
            "phase": "probe",
            "rollouts": 24,
            "problems": 4,
            "settings": 1,
            "correct": 1,
            "errors": 0,
        }
    ]


def test_problems_written_once_and_conflicts_refused(tmp_path):
    run = Run.create(tmp_path / "run")
    problems = [
        Problem(f"p{i}", f"prompt {i}", str(i), "chains", {"difficulty": i}) for i in range(3)
    ]
    assert run.write_problems(problems) == 3
    assert run.write_problems(problems[:2] + [Problem("p9", "x", "9", "chains")]) == 1
    table = run.problems()
    assert table.column("problem_id").to_pylist() == ["p0", "p1", "p2", "p9"]
    assert json.loads(table.column("meta")[1].as_py()) == {"difficulty": 1}
    with pytest.raises(StoreError, match="p1.*another prompt"):
        run.write_problems([Problem("p1", "changed", "1", "chains")])


def test_empty_run_has_typed_views(tmp_path):
    run = Run.create(tmp_path / "run")
    assert run.rollouts().schema == schema.ROLLOUTS
    assert run.keys() == set()
    assert run.duplicates().num_rows == 0


def test_not_a_run_names_the_fix(tmp_path):
    with pytest.raises(StoreError, match=r"not a run.*fixable sample"):
        Run(tmp_path / "nowhere")


def test_truncated_shard_is_quarantined_and_reported(tmp_path, caplog):
    run = make_run(tmp_path)
    victim = run.shard_paths()[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])

    moved = run.check()
    assert [q.path for q in moved] == [victim]
    assert not victim.exists()
    assert moved[0].moved_to.parent == run.path / "quarantine"
    assert moved[0].moved_to.exists()
    why = moved[0].moved_to.with_name(moved[0].moved_to.name + ".why.txt").read_text()
    assert str(victim) in why
    assert str(victim) in caplog.text
    message = str(moved[0])
    assert str(victim) in message and "sampl" in message and "again" in message
    assert run.rollouts().num_rows == 16  # the rest is still readable


def test_bit_rot_inside_a_shard_found_by_full_check_and_by_reads(tmp_path):
    run = make_run(tmp_path, n_problems=2, n_samples=40, flush_every=1000)
    shard = run.shard_paths()[0]
    data = bytearray(shard.read_bytes())
    footer_start = len(data) - int.from_bytes(data[-8:-4], "little") - 8
    for offset in range(200, footer_start - 200, 97):  # damage pages, keep the footer
        data[offset] ^= 0x5A
    shard.write_bytes(bytes(data))

    assert run.check() == []  # the footer is fine: the quick check cannot see it
    with pytest.raises(StoreError, match=str(shard.name)):
        run.rollouts()
    assert not shard.exists()
    assert (run.path / "quarantine").is_dir()
    assert run.rollouts().num_rows == 0


def test_shard_with_foreign_columns_is_quarantined(tmp_path):
    run = make_run(tmp_path, n_problems=1, n_samples=2)
    bad = run.path / "rollouts" / "x-1.parquet"
    table = pa.table(
        {
            "model": ["m"],
            "problem_id": ["p"],
            "phase": ["probe"],
            "setting": ["retry"],
            "sample_index": pa.array([0], pa.int64()),
            "text": [1],
        }
    )
    store.write_shard(table, bad)
    moved = run.check()
    assert [q.path for q in moved] == [bad]
    assert "sample_index" in moved[0].reason


def test_duplicates_are_detected(tmp_path):
    run = make_run(tmp_path, n_problems=2, n_samples=3)
    with run.writer(worker="w2") as w:
        w.append(rollout_row("p1", 2))
    dups = run.duplicates().to_pylist()
    assert dups == [
        {
            "model": "m",
            "problem_id": "p1",
            "phase": "probe",
            "setting": "retry",
            "sample_index": 2,
            "copies": 2,
        }
    ]


def test_writer_flushes_on_exception(tmp_path):
    run = Run.create(tmp_path / "run")
    with pytest.raises(RuntimeError), run.writer(flush_every=100) as w:
        w.append(rollout_row("p0", 0))
        raise RuntimeError("killed mid-way")
    assert run.rollouts().num_rows == 1


def test_temporaries_of_dead_writers_are_removed(tmp_path):
    run = Run.create(tmp_path / "run")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = socket.gethostname()
    stale = run.path / "rollouts" / f".x.parquet.{dead}@{host}.tmp"
    alive = run.path / "rollouts" / f".y.parquet.{os.getpid()}@{host}.tmp"
    other_host = run.path / "rollouts" / f".z.parquet.{dead}@elsewhere.tmp"
    for p in (stale, alive, other_host):
        p.write_bytes(b"partial")
    assert run.clean_temporaries() == 1
    assert not stale.exists() and alive.exists() and other_host.exists()
    assert run.rollouts().num_rows == 0  # temporaries are never read


def _write_v0_run(path):
    """A run as an unversioned tool would leave it: no schema version, fewer columns."""
    (path / "rollouts").mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"note": "hand-made"}))
    table = pa.table(
        {
            "model": ["m", "m"],
            "task": ["chains", "chains"],
            "problem_id": ["p0", "p1"],
            "phase": ["probe", "probe"],
            "setting": ["retry", "retry"],
            "sample_index": pa.array([0, 0], pa.int64()),
            "text": ["a#1", "b"],
            "correct": [True, False],
            "token_ids": [[1, 2], [3]],
        }
    )
    pq.write_table(table, path / "rollouts" / "old.parquet")


def test_unversioned_run_is_migrated_on_open(tmp_path):
    path = tmp_path / "old"
    _write_v0_run(path)
    with pytest.raises(StoreError, match="schema version 0"):
        Run(path, migrate=False)
    run = Run(path)
    assert run.manifest["schema_version"] == schema.SCHEMA_VERSION
    assert run.manifest["note"] == "hand-made" and run.manifest["invocations"] == []
    table = run.rollouts()
    assert table.schema == schema.ROLLOUTS
    assert table.column("token_ids").to_pylist() == [[1, 2], [3]]
    assert table.column("ref_logprobs").null_count == 2
    version = pq.read_schema(run.shard_paths()[0]).metadata[store.VERSION_KEY]
    assert version == str(schema.SCHEMA_VERSION).encode()


def test_newer_schema_is_refused(tmp_path):
    run = make_run(tmp_path)
    run.update_manifest(lambda m: m.__setitem__("schema_version", 99))
    with pytest.raises(StoreError, match="upgrade fixable"):
        Run(run.path)


def test_a_new_numbered_migration_upgrades_shards_and_manifest(tmp_path, monkeypatch):
    run = make_run(tmp_path, n_problems=2, n_samples=3)

    def rename_setting(table):
        i = table.schema.get_field_index("setting")
        return table.set_column(i, "setting", pa.array(["retry()"] * table.num_rows))

    step = Migration(
        2, "test: rename retry", lambda m: {**m, "migrated": True}, rename_setting, lambda t: t
    )
    monkeypatch.setattr(store, "MIGRATIONS", [*MIGRATIONS, step])
    upgraded = Run(run.path)
    assert upgraded.manifest["schema_version"] == 2 and upgraded.manifest["migrated"]
    assert set(upgraded.rollouts().column("setting").to_pylist()) == {"retry()"}
    for shard in upgraded.shard_paths():
        assert pq.read_schema(shard).metadata[store.VERSION_KEY] == b"2"
    # a shard copied in from an older run later is upgraded when checked
    store.write_shard(
        pa.Table.from_pylist([rollout_row("p7", 0)], schema=schema.ROLLOUTS),
        run.path / "rollouts" / "late.parquet",
        version=1,
    )
    assert upgraded.keys("problem_id = 'p7'") == {("m", "p7", "probe", "retry()", 0)}


def _write_part(path, worker, problems):
    run = Run.create(path)
    with run.writer(worker=worker, flush_every=3) as w:
        for p in problems:
            for i in range(4):
                w.append(rollout_row(p, i))
    run.update_manifest(lambda m: m["invocations"].append({"worker": worker}))


def test_many_writers_share_a_run(tmp_path):
    path = tmp_path / "shared"
    ctx = multiprocessing.get_context("fork")
    procs = [
        ctx.Process(target=_write_part, args=(path, f"w{k}", [f"p{k}-{j}" for j in range(5)]))
        for k in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    run = Run(path)
    assert len(run.keys()) == 3 * 5 * 4 == run.rollouts().num_rows
    assert run.duplicates().num_rows == 0
    assert sorted(i["worker"] for i in run.manifest["invocations"]) == ["w0", "w1", "w2"]
    assert {s.name.split("-")[0] for s in run.shard_paths()} == {"w0", "w1", "w2"}
