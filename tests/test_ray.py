"""The Ray executor: a run sampled on Ray actors equals a local run with the same seed, key
for key and token for token, also when an actor or the driver is SIGKILLed mid-run.

Tests marked ``ray`` start a local Ray cluster (``pip install "fixable[ray]"``) and run
with ``python -m pytest -m ray tests/test_ray.py`` (about two minutes on two cores); the
others check the executor's parts without Ray and run in the default suite.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from fixable import schema
from fixable.cli.main import main
from fixable.errors import ConfigError, FixableError, UnknownNameError
from fixable.executors import (
    LocalExecutor,
    RayExecutor,
    SamplingActor,
    chunks,
    make_executor,
    remove_redundant_copies,
    units,
)
from fixable.interventions import RETRY, Intervention
from fixable.sampling import PROBE, RESCUE, plan, sample
from fixable.store import Run
from fixable.tasks import get_task

os.environ.setdefault("RAY_AUTH_MODE", "disabled")

PROBLEMS, K, R = 16, 4, 2
GRID = "retry;temperature:0.5"
# each actor reserves half a core: two of them fit the 2-core machine beside the driver
ACTORS = ["-R", "actors=2", "-R", "num_cpus=0.5"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    import torch

    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    torch.manual_seed(0)
    model = OrganismLM(ModelConfig(family="llama", n_layer=2, n_head=2, n_embd=32))
    return save_checkpoint(model, tmp_path_factory.mktemp("tiny") / "model")


def sample_args(model: Path, out: Path, *extra: str) -> list[str]:
    return [
        "sample", "--model", str(model), "--backend", "organism", "--task", "chains",
        "-T", "difficulties=[1,2]", "--problems", str(PROBLEMS), "--k", str(K), "--r", str(R),
        "--interventions", GRID, "--seed", "11", "--max-tokens", "32",
        "--batch-size", "8", "--out", str(out), "-q", *extra,
    ]  # fmt: skip


def content(path: Path) -> list[dict]:
    return Run(path).rollouts().drop_columns(list(schema.NON_CONTENT)).to_pylist()


def shards(out: Path) -> list[Path]:
    directory = out / "rollouts"
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model) -> list[dict]:
    """What the local executor writes: the reference every Ray run must equal."""
    out = tmp_path_factory.mktemp("local") / "run"
    main(sample_args(tiny_model, out))
    rows = content(out)
    assert len(rows) == PROBLEMS * K + PROBLEMS * R * 2  # random weights fail every probe
    return rows


# --------------------------------------------------------------------------- without Ray


def test_units_are_whole_and_chunks_keep_one_intervention():
    task = get_task("chains", difficulties=[1])
    problems = task.problems(5)
    grid = [RETRY, Intervention("temperature", 0.5)]
    todo = plan("m", problems, RESCUE, grid, 3, run_seed=1)
    assert [len(u) for u in units(todo)] == [3] * 10
    cut = chunks(todo, 7)
    assert sum(len(c) for c in cut) == len(todo)
    for chunk in cut:
        assert len({p.intervention for p in chunk}) == 1
        assert len(chunk) <= 7 or len(units(chunk)) == 1
        # a unit is never split between chunks
        for unit in units(chunk):
            assert len(unit) == 3
    # a unit larger than the chunk size stays whole
    assert [len(c) for c in chunks(todo[:3], 2)] == [3]
    with pytest.raises(ConfigError, match="chunk_size"):
        chunks(todo, 0)


def test_make_executor_needs_ray_for_ray_options():
    assert isinstance(make_executor(None), LocalExecutor)
    with pytest.raises(ConfigError, match="--ray auto"):
        make_executor(None, {"actors": 2})
    with pytest.raises(ConfigError, match="actors must be at least 1, got 0"):
        RayExecutor("auto", actors=0)
    with pytest.raises(ConfigError, match="num_cpus must be a number, got 'half'"):
        make_executor("auto", {"num_cpus": "half"})
    with pytest.raises(UnknownNameError, match="Did you mean: actors"):
        make_executor("auto", {"actor": 2})


def test_a_retried_chunk_skips_keys_a_lost_actor_wrote(tmp_path, tiny_model):
    """An actor that died after renaming its shard into place: the chunk's next actor
    samples only what is missing, so no key is written twice."""
    task = get_task("chains", difficulties=[1, 2])
    problems = task.problems(4)
    actor = SamplingActor("organism", str(tiny_model), {})
    run = Run.create(tmp_path / "run")
    todo = plan(str(tiny_model), problems, PROBE, [RETRY], 3, run_seed=5)
    options = dict(max_tokens=16, batch_size=8, score_reference=True)
    first = actor.sample_chunk([task], todo[:6], str(run.path), options, False)
    assert first["sampled"] == 6 and first["dropped"] == 0
    again = actor.sample_chunk([task], todo, str(run.path), options, True)
    assert again["dropped"] == 6 and again["sampled"] == len(todo) - 6
    assert run.duplicates().num_rows == 0
    assert len(run.keys()) == len(todo)


def test_redundant_copies_are_moved_aside_and_conflicts_kept(tmp_path, tiny_model):
    from fixable.backends.organism import OrganismBackend

    task = get_task("chains", difficulties=[1, 2])
    out = tmp_path / "run"
    backend = OrganismBackend(str(tiny_model))
    sample(backend, task, task.problems(3), out, n=2, max_tokens=16, flush_every=2)
    run = Run(out)
    before = content(out)
    original = shards(out)[0]
    copy = original.with_name("zombie-" + original.name)
    shutil.copy(original, copy)  # what an actor given up for dead still wrote
    assert run.duplicates().num_rows > 0
    moved = remove_redundant_copies(run)
    assert len(moved) == 1 and moved[0].parent.name == "quarantine"
    assert "identical content" in moved[0].with_name(moved[0].name + ".why.txt").read_text()
    assert run.duplicates().num_rows == 0 and content(out) == before

    # a copy with other content is a real conflict: left for Run.duplicates() to report
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(original)
    table = table.set_column(
        table.schema.get_field_index("text"), "text", pc.binary_join_element_wise(
            table.column("text"), "!", "")
    )  # fmt: skip
    pq.write_table(table, original.with_name("other-" + original.name))
    assert remove_redundant_copies(run) == []
    assert run.duplicates().num_rows > 0


# --------------------------------------------------------------------------- on a Ray cluster


def _short_temp_dir() -> str:
    # Ray's socket paths live under its temp dir and must fit in 107 characters
    return tempfile.mkdtemp(prefix="fxray-", dir="/tmp")


def _kill_leftovers(temp_dir: str) -> None:
    """SIGKILL what a cluster whose driver was killed left behind (its per-node agents
    outlive it): the processes holding files under that cluster's private temp dir."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():  # this process, the driver, has its logs open there
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith(temp_dir):
                os.kill(int(pid), signal.SIGKILL)
                break


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    temp_dir = _short_temp_dir()
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _temp_dir=temp_dir,
        logging_level="WARNING",
    )
    yield ray
    ray.shutdown()
    _kill_leftovers(temp_dir)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _busy_actor_pids() -> list[int]:
    """Ray titles an actor process after the method it is running."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read()
        except OSError:
            continue
        if title.startswith(b"ray::SamplingActor.sample_chunk"):
            pids.append(int(pid))
    return pids


@pytest.mark.ray
def test_ray_run_equals_the_local_run(tmp_path, tiny_model, local_run, ray_cluster):
    out = tmp_path / "ray"
    main(sample_args(tiny_model, out, "--ray", "auto", *ACTORS))
    run = Run(out)
    assert run.duplicates().num_rows == 0
    assert content(out) == local_run
    # the actors wrote it, two of them, and not the driver
    workers = set(run.query("SELECT DISTINCT worker FROM rollouts").column(0).to_pylist())
    assert len(workers) == 2 and not workers & {f"{os.uname().nodename}-{os.getpid()}"}
    # resuming a finished run through Ray samples nothing
    before = shards(out)
    main(sample_args(tiny_model, out, "--ray", "auto", *ACTORS))
    assert shards(out) == before


@pytest.mark.ray
def test_a_killed_actor_loses_nothing(tmp_path, tiny_model, local_run, ray_cluster):
    import threading

    from fixable.config import resolve_config
    from fixable.sampling import sample_from_config

    out = tmp_path / "ray"
    killed: list[int] = []

    def kill_a_busy_actor() -> None:
        # once the first shard is in, SIGKILL an actor in the middle of a chunk
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            busy = _busy_actor_pids() if shards(out) else []
            if busy:
                os.kill(busy[0], signal.SIGKILL)
                killed.append(busy[0])
                return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_busy_actor, daemon=True)
    killer.start()
    config = resolve_config(
        models=(str(tiny_model),), task="chains", task_options={"difficulties": [1, 2]},
        problems=PROBLEMS, k=K, r=R, interventions=GRID, phase="sweep", seed=11,
        max_tokens=32, batch_size=8, out=str(out),
    )  # fmt: skip
    with RayExecutor("auto", actors=2, num_cpus=0.5, chunk_size=4) as executor:
        reports = sample_from_config(config, executor=executor)
    killer.join(5)
    assert killed, "no actor was caught sampling"

    assert len(executor.losses) == 1
    loss = executor.losses[0]
    assert loss.worker.endswith(f"-{killed[0]}") and loss.rollouts > 0 and loss.replaced
    assert "lost" in executor.summary()
    run = Run(out)
    assert reports[0].probe.duplicates == 0 and run.duplicates().num_rows == 0
    assert content(out) == local_run


@pytest.mark.ray
def test_an_actor_that_cannot_build_its_backend_is_a_one_line_error(tmp_path, ray_cluster):
    executor = RayExecutor("auto", actors=1, num_cpus=0.5)
    with pytest.raises(FixableError, match="no-such-model"):
        executor.backend("organism", "no-such-model", {})
    executor.close()


@pytest.mark.ray
def test_a_killed_driver_resumes_with_the_same_command(tmp_path, tiny_model, local_run):
    """SIGKILL ``fixable sample --ray local`` (driver and cluster together) once shards
    are being written, run the same command again: the run equals the local run."""
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    rng = random.Random()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    log = tmp_path / "driver.stderr"
    temp_dirs = [_short_temp_dir(), _short_temp_dir()]
    try:
        args = sample_args(
            tiny_model, out, "--ray", "local", *ACTORS, "-R", "chunk_size=4",
            "-R", f"temp_dir={temp_dirs[0]}",
        )  # fmt: skip
        with open(log, "wb") as stderr:
            driver = subprocess.Popen(
                [sys.executable, "-m", "fixable.cli.main", *args],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        target = rng.randint(1, 6)
        deadline = time.monotonic() + 180
        while driver.poll() is None and len(shards(out)) < target:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.01)
        assert driver.poll() is None, f"finished before the kill: {log.read_text()[-2000:]}"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
        at_kill = len(shards(out))
        assert at_kill < len(local_run) // 4  # far from done: chunks are 4 rollouts

        args[args.index(f"temp_dir={temp_dirs[0]}")] = f"temp_dir={temp_dirs[1]}"
        again = subprocess.run(
            [sys.executable, "-m", "fixable.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert again.returncode == 0, again.stderr[-2000:]
    finally:
        for temp_dir in temp_dirs:
            _kill_leftovers(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
    run = Run(out)
    assert run.duplicates().num_rows == 0, f"killed at {at_kill} shards"
    assert content(out) == local_run, f"killed at {at_kill} shards"
    # the killed invocation is on record, without a report
    finished = [i for i in run.manifest["invocations"] if "report" in i]
    assert len(run.manifest["invocations"]) > len(finished)
