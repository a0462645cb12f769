"""SIGKILL a real ``fixable sample`` process at a random moment, run it again: every key
is there exactly once and the content equals an uninterrupted run with the same seed."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fixable import schema
from fixable.cli.main import main
from fixable.store import Run

PROBLEMS, K, R = 12, 4, 2
GRID = "retry;temperature:0.5"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    torch.manual_seed(0)
    model = OrganismLM(ModelConfig(family="llama", n_layer=2, n_head=2, n_embd=32))
    return save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "model")


def sample_args(model: Path, out: Path) -> list[str]:
    return [
        "sample", "--model", str(model), "--backend", "organism", "--task", "chains",
        "-T", "difficulties=[1,2]", "--problems", str(PROBLEMS), "--k", str(K), "--r", str(R),
        "--interventions", GRID, "--seed", "11", "--max-tokens", "32",
        "--batch-size", "4", "--flush-every", "4", "--out", str(out), "-q",
    ]  # fmt: skip


def content(path: Path) -> list[dict]:
    return Run(path).rollouts().drop_columns(list(schema.NON_CONTENT)).to_pylist()


def n_shards(out: Path) -> int:
    return len(list((out / "rollouts").glob("*.parquet"))) if (out / "rollouts").is_dir() else 0


def kill_at_random(args: list[str], out: Path, rng: random.Random, total_shards: int) -> int:
    """Start ``fixable sample``, SIGKILL it once a random number of shards is written plus
    a random delay; returns the shards present at the kill (-1 if it finished first)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    present = n_shards(out)
    target = present + rng.randint(1, max(1, (total_shards - present) // 2))
    delay = rng.uniform(0.0, 0.01)  # a batch takes a few milliseconds
    log = out.with_name(out.name + ".stderr")
    with open(log, "ab") as stderr:  # a file, not a pipe nobody reads while it runs
        proc = subprocess.Popen(
            [sys.executable, "-m", "fixable.cli.main", *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 120
    while proc.poll() is None and n_shards(out) < target and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        assert proc.returncode == 0, log.read_text()
        return -1
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    return n_shards(out)


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_model):
    whole = tmp_path / "whole"
    main(sample_args(tiny_model, whole))
    expected = content(whole)
    assert len(expected) > PROBLEMS * K  # the probe and some rescue
    total_shards = n_shards(whole)

    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    resumed = tmp_path / "resumed"
    kills = [
        kill_at_random(sample_args(tiny_model, resumed), resumed, rng, total_shards)
        for _ in range(2)
    ]
    assert kills[0] != -1, f"the first run finished before the kill (rng seed {seed})"

    print(f"rng seed {seed}: killed at {kills} of {total_shards} shards")
    main(sample_args(tiny_model, resumed))
    run = Run(resumed)
    assert run.duplicates().num_rows == 0, f"rng seed {seed}, kills at {kills}"
    assert len(run.keys()) == len(expected)
    # what a writer killed mid-shard left behind was cleaned up, and never read
    assert not list((resumed / "rollouts").glob(".*.tmp"))
    assert content(resumed) == expected, f"rng seed {seed}, kills at {kills}"
    # the killed invocations are on record, without a report
    finished = [i for i in run.manifest["invocations"] if "report" in i]
    assert len(run.manifest["invocations"]) > len(finished)
