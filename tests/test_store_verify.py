"""Readers verify page checksums: a damaged shard is refused by every reader, never read."""

from __future__ import annotations

import random

import duckdb
import pyarrow.parquet as pq
import pytest

from fixable import store
from fixable.cli.main import main
from fixable.errors import StoreError
from fixable.store import Run
from test_store import rollout_row


def damaged_run(tmp_path, monkeypatch):
    """A run of two shards; one has a flipped byte in its ``logprobs`` dictionary page
    (footer intact), read afterwards by a process that did not write it."""
    run = Run.create(tmp_path / "run")
    rng = random.Random(0)
    for worker in ("w1", "w2"):
        with run.writer(flush_every=1000, worker=worker) as w:
            for i in range(80):
                row = rollout_row(f"p{i % 4}", i, model=worker)
                row["logprobs"] = [-rng.random() * 3 for _ in row["token_ids"]]
                w.append(row)
    shard = next(s for s in run.shard_paths() if "w1-" in s.name)
    metadata = pq.ParquetFile(shard).metadata.row_group(0)
    column = next(
        metadata.column(j)
        for j in range(metadata.num_columns)
        if metadata.column(j).path_in_schema.startswith("logprobs")
    )
    sql = f"SELECT sum(list_sum(logprobs)) FROM read_parquet('{shard}')"
    before = duckdb.sql(sql).fetchall()[0][0]
    data = bytearray(shard.read_bytes())
    data[column.dictionary_page_offset + 300] ^= 0x10
    shard.write_bytes(bytes(data))
    # DuckDB alone reads the damaged page without complaint: the values are simply wrong.
    assert duckdb.sql(sql).fetchall()[0][0] != pytest.approx(before)
    monkeypatch.setattr(store, "_VERIFIED", {})  # a fresh process knows no shard
    return Run(run.path), shard


def cli(capsys, *args) -> tuple[int, str, str]:
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


READERS = {
    "query": lambda run, tmp: run.query("SELECT sum(list_sum(logprobs)) FROM rollouts"),
    "rollouts (analyze)": lambda run, tmp: run.rollouts(columns=["logprobs"]),
    "keys (resume)": lambda run, tmp: run.keys(),
    "copy (export)": lambda run, tmp: run.copy("SELECT * FROM rollouts", tmp / "x.csv", "csv"),
    "batches": lambda run, tmp: list(run.batches("SELECT logprobs FROM rollouts")),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_every_reader_refuses_a_damaged_page(tmp_path, monkeypatch, reader):
    run, shard = damaged_run(tmp_path, monkeypatch)
    with pytest.raises(StoreError) as info:
        READERS[reader](run, tmp_path)
    message = str(info.value)
    assert str(shard) in message and "CRC" in message and "\n" not in message
    assert "its 80 rows are missing" in message and "Re-run" in message
    assert not shard.exists() and (run.path / "quarantine" / f"rollouts-{shard.name}").exists()
    assert not (tmp_path / "x.csv").exists()
    # the rest reads, and only the rest
    assert run.query("SELECT DISTINCT model FROM rollouts").column(0).to_pylist() == ["w2"]


@pytest.mark.parametrize(
    "args",
    [
        ("query", "{run}", "SELECT sum(list_sum(logprobs)) FROM rollouts"),
        ("export", "{run}", "--jsonl", "{tmp}/out.jsonl"),
    ],
    ids=["query", "export"],
)
def test_query_and_export_refuse_it_in_one_line(tmp_path, monkeypatch, capsys, args):
    run, shard = damaged_run(tmp_path, monkeypatch)
    code, out, err = cli(capsys, *(a.format(run=run.path, tmp=tmp_path) for a in args))
    assert code == 2 and out == "" and err.count("\n") == 1
    assert str(shard) in err and "CRC" in err
    assert not (tmp_path / "out.jsonl").exists()


def test_resume_quarantines_and_resamples_it(tmp_path, monkeypatch):
    run, shard = damaged_run(tmp_path, monkeypatch)
    moved = run.check(full=True)  # what `fixable sample` does before trusting its keys
    assert [q.path for q in moved] == [shard]


def test_runs_verify_says_what_is_damaged_and_what_will_be_resampled(tmp_path, monkeypatch, capsys):
    run, shard = damaged_run(tmp_path, monkeypatch)
    code, out, _ = cli(capsys, "runs", "--verify", run.path)
    assert code == 1
    assert "2 shard(s) read page by page, 1 damaged now" in out
    assert f"damaged: corrupt shard {shard}" in out and "CRC" in out
    assert "missing: model 'w1' phase 'probe': 80 rollout(s) of 4 problem(s)" in out
    # once the missing keys are back (as re-sampling would write them), nothing is missing
    with run.writer(worker="again") as w:
        for i in range(80):
            w.append(rollout_row(f"p{i % 4}", i, model="w1"))
    code, out, _ = cli(capsys, "runs", "--verify", run.path)
    assert code == 0 and "0 damaged now, 1 in quarantine/" in out
    assert "nothing is missing" in out


def test_verification_is_paid_once_per_shard_per_process(tmp_path, monkeypatch):
    run = Run.create(tmp_path / "run")
    with run.writer(worker="w") as w:
        w.append(rollout_row("p0", 0))
    monkeypatch.setattr(store, "_VERIFIED", {})
    reads = []
    original = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, i, **k: reads.append(i) or original(self, i, **k),
    )
    for _ in range(3):
        run.query("SELECT count(*) FROM rollouts")
    assert len(reads) == 1


def test_runs_lists_the_rest_of_a_run_with_a_damaged_shard(tmp_path, monkeypatch, capsys):
    run, shard = damaged_run(tmp_path, monkeypatch)
    code, out, err = cli(capsys, "runs", tmp_path)
    assert code == 0 and str(shard) in err and err.startswith("warning: ")
    assert " w2 " in out and " w1 " not in out  # the damaged shard held every w1 rollout
