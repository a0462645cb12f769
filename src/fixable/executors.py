"""Executors: where the rollouts of a sampling plan are computed.

``fixable.sampling.sample`` plans every key, drops the keys a run already holds and hands
the rest to an executor:

* ``LocalExecutor`` (the default) samples them in this process with one backend.
* ``ProcessExecutor`` spreads them over a few worker processes on this machine, each
  with its own copy of the backend and one torch thread: on a small CPU two
  single-threaded processes sample faster than one process with two threads. Like the
  Ray actors, each worker writes its chunks as shards into the run.
* ``RayExecutor`` splits them into *units* — all the missing rollouts of one (problem,
  phase, intervention setting) — packs units into *chunks* of a few hundred rollouts and
  sends each chunk to a Ray actor. Every actor holds one backend engine (on a GPU
  cluster, one vLLM engine per GPU) and writes each chunk as one Parquet shard into the
  same run, through the store's atomic rename, so the run directory must be on a
  filesystem every node sees. The driver only plans, dispatches and reports progress.

Fault tolerance. A chunk's rollouts land in one shard or not at all. When an actor dies
(killed, out of memory, node lost) its unfinished chunk goes back to the queue and runs
on another actor, which first drops the keys a dying actor may still have written; a
replacement actor is started while the allowance (``max_actor_failures``) lasts. A killed
driver is resumed by running the same command again: the plan skips present keys. After
each phase the executor looks for keys written twice (an actor that outlived its driver
or its node's heartbeat) and moves a shard whose every row is an identical copy of rows
in other shards to ``quarantine/``, with the reason beside it. Seeds are a function of
the key, so every key ends up once, with the tokens a local run would give it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fixable import errors, schema
from fixable.backends.base import Backend, Generation, GenerationRequest
from fixable.errors import ConfigError, FixableError
from fixable.interventions import Intervention
from fixable.sampling import (
    PROBE,
    Planned,
    Progress,
    ProgressCallback,
    SampleReport,
    sample_planned,
)
from fixable.store import DEFAULT_FLUSH_EVERY, QUARANTINE, Run, default_worker, sql_string
from fixable.tasks.base import Task

log = logging.getLogger(__name__)

RAY_HINT = 'ray is not installed: pip install "fixable[ray]" (or "ray[data]")'
CHUNKS_PER_ACTOR = 4  # chunks per actor a plan is cut into at least: balance and progress
_COUNTERS = ("sampled", "correct", "errors", "tokens", "cost_tokens", "reference_scored")


class Executor(Protocol):
    """Builds the backend a driver samples with, and samples a plan's missing keys."""

    def backend(self, name: str, model: str, options: dict) -> Backend:
        """The backend ``sample`` should be given for ``model`` (registry ``name``)."""
        ...

    def sample_planned(
        self,
        backend: Backend,
        task: Task,
        todo: Sequence[Planned],
        run: Run,
        **options: Any,
    ) -> SampleReport:
        """Sample exactly ``todo`` into ``run``; the options of ``sampling.sample_planned``."""
        ...

    def close(self) -> None: ...


class LocalExecutor:
    """Everything in this process, with one backend: what ``fixable sample`` does by default."""

    def backend(self, name: str, model: str, options: dict) -> Backend:
        from fixable.registry import backends

        return backends.create(name, model, **options)

    def sample_planned(self, backend, task, todo, run, **options) -> SampleReport:
        return sample_planned(backend, task, todo, run, **options)

    def close(self) -> None:
        pass


def make_executor(ray: str | None, options: dict | None = None) -> Executor:
    """The executor of ``fixable sample --ray ADDRESS -R KEY=VALUE``: local when ``ray`` is None."""
    if ray is None:
        if options:
            raise ConfigError(
                f"--ray-option {', '.join(sorted(options))} given without --ray; "
                "add --ray auto (or an address)"
            )
        return LocalExecutor()
    import inspect

    known = [n for n in inspect.signature(RayExecutor).parameters if n != "address"]
    for name in options or {}:
        if name not in known:
            raise errors.UnknownNameError("ray option", name, known)
    return RayExecutor(ray, **(options or {}))


def _number(name: str, value: Any, kind: type, minimum: float) -> Any:
    """``value`` as ``kind`` (int or float), at least ``minimum``; else a ConfigError."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = kind(value)
        if kind is int and number != float(value):
            raise ValueError
    except (TypeError, ValueError):
        word = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} must be {word}, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum:g}, got {value!r}")
    return number


# --------------------------------------------------------------------------- units and chunks


def unit_key(planned: Planned) -> tuple[str, str, str]:
    """The unit a rollout belongs to: (problem id, phase, intervention setting)."""
    return (planned.problem.id, planned.phase, planned.intervention.label)


def units(todo: Sequence[Planned]) -> list[list[Planned]]:
    """The rollouts of ``todo`` grouped by unit, units and rollouts in plan order."""
    grouped: dict[tuple, list[Planned]] = {}
    for planned in todo:
        grouped.setdefault(unit_key(planned), []).append(planned)
    return list(grouped.values())


def chunks(todo: Sequence[Planned], size: int) -> list[list[Planned]]:
    """Consecutive whole units of one phase and intervention, about ``size`` rollouts each
    (a unit larger than ``size`` is a chunk of its own: units are never split)."""
    if size < 1:
        raise ConfigError(f"chunk_size must be at least 1, got {size}")
    out: list[list[Planned]] = []
    current: list[Planned] = []
    for unit in units(todo):
        head = unit[0]
        same_kind = bool(current) and (current[0].phase, current[0].intervention) == (
            head.phase,
            head.intervention,
        )
        if current and (not same_kind or len(current) + len(unit) > size):
            out.append(current)
            current = []
        current.extend(unit)
    if current:
        out.append(current)
    return out


# --------------------------------------------------------------------------- worker processes


class ProcessExecutor:
    """Sample on ``workers`` processes of this machine, each with ``threads`` torch threads.

    The driver builds the backend as ``LocalExecutor`` does (it answers what ``sample``
    asks before sampling and records the manifest's identity); ``sample_planned`` sends a
    pickled copy of it to every worker, cuts the plan into chunks of whole units of one
    setting and prompt-length band (``_length_chunks``) and hands them, largest first, to
    whichever worker is free; each chunk
    becomes one shard, written by its worker under its own name. A seeded backend gives
    every rollout the tokens it would get in one process (a rollout's seed is a function
    of its key, and the organism engine's rows do not depend on their batch).

    A backend that cannot be pickled (one holding a network client or a lock) cannot be
    copied into workers: use one worker. Like any ``multiprocessing`` program, a script
    that uses this executor needs the ``if __name__ == "__main__":`` guard.

    ``start_method``: ``"spawn"`` (default; each worker imports torch itself, a few
    seconds of CPU) or ``"forkserver"`` (one server imports torch and the workers fork from
    it: a small sampling call took 3.9 s instead of 8.3 s here, but the workers' CPU time
    is then not counted in the driver's children, so ``bench_demo.py`` could not see it). A worker that dies stops the call with a
    ``FixableError``; the rollouts of the chunks already finished are in the run, and
    running the same command again samples the rest.
    """

    def __init__(self, workers: int = 2, *, threads: int = 1, start_method: str = "spawn"):
        self.workers = _number("workers", workers, int, 1)
        self.threads = _number("threads", threads, int, 1)
        self.start_method = start_method
        self._procs: list = []
        self._conns: list = []
        self._sent: dict[int, tuple[str | None, str | None]] = {}  # worker → (backend, task) keys
        self._blobs: dict[str, tuple[object, str, bytes]] = {}  # what → (obj, key, pickle)

    def backend(self, name: str, model: str, options: dict) -> Backend:
        from fixable.registry import backends

        return backends.create(name, model, **options)

    def _start(self) -> None:
        if self._procs:
            return
        import multiprocessing

        context = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # the server imports torch and the sampling code once; each worker forks from it
            context.set_forkserver_preload(["torch", "fixable.sampling", "fixable.executors"])
        for index in range(self.workers):
            parent, child = context.Pipe()
            proc = context.Process(
                target=_worker_main,
                args=(child, self.threads, os.getpid()),
                name=f"fixable-sampler-{index}",
                daemon=True,
            )
            proc.start()
            child.close()
            self._procs.append(proc)
            self._conns.append(parent)
            self._sent[index] = (None, None)
        log.info("started %d sampling worker processes", self.workers)

    def _blob(self, obj, what: str) -> tuple[str, bytes]:
        import pickle
        import uuid

        known = self._blobs.get(what)  # the last backend and task sent
        if known is not None and known[0] is obj:
            return known[1], known[2]
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:  # noqa: BLE001 — any pickling failure means the same thing
            raise ConfigError(
                f"the {what} {getattr(obj, 'name', type(obj).__name__)!r} cannot be copied into "
                f"worker processes ({type(e).__name__}: {e}); sample with one worker (--workers 1)"
            ) from None
        key = uuid.uuid4().hex
        self._blobs[what] = (obj, key, data)
        return key, data

    def sample_planned(
        self,
        backend: Backend,
        task: Task,
        todo: Sequence[Planned],
        run: Run,
        *,
        report: SampleReport | None = None,
        max_tokens: int = 160,
        batch_size: int = 256,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        score_reference: bool = True,
        worker: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> SampleReport:
        """Sample exactly ``todo`` into ``run`` on the worker processes; ``worker`` is not
        used (each process writes as its own host-pid)."""
        options = dict(
            max_tokens=max_tokens, batch_size=batch_size, score_reference=score_reference
        )
        model = backend.model_name
        phase = todo[0].phase if todo else PROBE
        if report is None:
            report = SampleReport(str(run.path), model, phase, planned=len(todo))
        if not todo:
            return report
        backend_key, backend_blob = self._blob(backend, "backend")
        task_key, task_blob = self._blob(task, "task")
        self._start()
        from multiprocessing.connection import wait

        queue = collections.deque(_length_chunks(todo, batch_size))
        run_path = str(Path(run.path).resolve())
        started = time.monotonic()
        settled = 0
        busy: dict[int, int] = {}  # worker index → rollouts of its chunk

        def tick() -> None:
            if progress is not None:
                elapsed = time.monotonic() - started
                progress(
                    Progress(
                        model, phase, len(todo), settled, report.tokens, report.skipped, elapsed
                    )
                )

        tick()
        try:
            while queue or busy:
                for index, conn in enumerate(self._conns):
                    if queue and index not in busy:
                        chunk = queue.popleft()
                        have_backend, have_task = self._sent[index]
                        message = (
                            backend_key,
                            None if have_backend == backend_key else backend_blob,
                            task_key,
                            None if have_task == task_key else task_blob,
                            chunk,
                            run_path,
                            options,
                        )
                        try:
                            conn.send(message)
                        except OSError:  # BrokenPipeError: it died (e.g. while starting)
                            raise FixableError(
                                f"sampling worker {index} died (exit code "
                                f"{self._procs[index].exitcode}); see its error above"
                            ) from None
                        self._sent[index] = (backend_key, task_key)
                        busy[index] = len(chunk)
                ready = wait([self._conns[i] for i in busy])
                for conn in ready:
                    index = self._conns.index(conn)
                    try:
                        result = conn.recv()
                    except (EOFError, OSError):
                        code = self._procs[index].exitcode
                        raise FixableError(
                            f"sampling worker {index} died (exit code {code}); the rollouts of "
                            f"finished chunks are in {run.path}: run the same command again to "
                            "sample the rest"
                        ) from None
                    busy.pop(index)
                    if "error" in result:
                        _raise_remote(result["error"], f"sampling worker {index}")
                    if "crash" in result:
                        raise FixableError(f"sampling worker {index} failed:\n{result['crash']}")
                    for name in _COUNTERS:
                        setattr(report, name, getattr(report, name) + result[name])
                    settled += result["sampled"]
                    tick()
        except BaseException:
            self.close()  # nothing may write into the run after we return
            raise
        return report

    def close(self) -> None:
        """Stop the worker processes (they are started again when next needed)."""
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._sent = [], [], {}

    def __enter__(self) -> ProcessExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


PROMPT_GROUP = 32  # prompts whose lengths (characters) fall in one such band share a chunk


def _length_chunks(todo: Sequence[Planned], size: int) -> list[list[Planned]]:
    """Chunks for worker processes: whole units grouped by (phase, setting, prompt length
    band), each group cut into pieces of at most ``size`` rollouts, largest first.

    A decoding engine runs one step loop per batch of similar prompt lengths (the organism
    engine buckets prompts by length; each loop costs a fixed amount per step whatever its
    rows), so splitting one length group over two workers would run its loop twice; giving
    each worker whole groups keeps the number of loops that of one process. Largest first
    balances the workers (the longest-processing-time rule)."""
    groups: dict[tuple, list[list[Planned]]] = {}
    for unit in units(todo):
        head = unit[0]
        band = len(head.problem.prompt) // PROMPT_GROUP
        groups.setdefault((head.phase, head.intervention.label, band), []).append(unit)
    out: list[list[Planned]] = []
    for group in groups.values():
        out.extend(chunks([p for unit in group for p in unit], size))
    return sorted(out, key=lambda c: -len(c) * c[0].intervention.cost_factor)


def _tie_to_parent(parent_pid: int) -> None:
    """Die with the driver: a worker must not write a chunk into a run after its driver was
    killed (the resumed run would sample those keys again). Ctrl-C goes to the driver
    alone, which then stops the workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        # PR_SET_PDEATHSIG: SIGKILL when the parent exits (the driver, or the fork server,
        # which exits with the driver)
        libc.prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the pipe's EOF still stops an idle worker
        return
    try:  # the driver died before prctl took effect
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        os._exit(1)


def _worker_main(conn, threads: int, parent_pid: int) -> None:
    """A sampling worker process: keeps the last backend and task it was sent, samples
    each chunk it receives into its run as one shard and answers with the counts."""
    import pickle
    import traceback

    import torch

    _tie_to_parent(parent_pid)
    torch.set_num_threads(threads)
    worker = default_worker()
    backend = task = None
    backend_key = task_key = None
    runs: dict[str, Run] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        new_backend_key, backend_blob, new_task_key, task_blob, chunk, run_path, options = message
        try:
            if backend_blob is not None or new_backend_key != backend_key:
                close = getattr(backend, "close", None)
                if callable(close):
                    close()
                backend, backend_key = pickle.loads(backend_blob), new_backend_key
            if task_blob is not None or new_task_key != task_key:
                task, task_key = pickle.loads(task_blob), new_task_key
            run = runs.get(run_path)
            if run is None:
                run = runs[run_path] = Run(run_path)
            report = sample_planned(
                backend, task, chunk, run, worker=worker, flush_every=len(chunk), **options
            )
            result = {name: getattr(report, name) for name in _COUNTERS}
        except FixableError as e:
            result = {"error": (type(e).__name__, str(e))}
        except Exception:  # noqa: BLE001 — sent back whole to the driver
            result = {"crash": traceback.format_exc()}
        conn.send(result)


# --------------------------------------------------------------------------- the actor


class SamplingActor:
    """What runs inside one Ray actor: one backend, sampling the chunks it is sent into
    the run they belong to. A plain class, made a Ray actor by ``RayExecutor``."""

    def __init__(self, backend_name: str, model: str, options: dict):
        from fixable.registry import backends

        self.worker = default_worker()
        self.error: tuple[str, str] | None = None
        self.backend = None
        try:
            self.backend = backends.create(backend_name, model, **options)
        except FixableError as e:  # reported by describe(): a user error, not a crash
            self.error = (type(e).__name__, str(e))
        self._runs: dict[str, Run] = {}
        self._tasks: dict[str, Task] = {}

    def describe(self, with_identity: bool) -> dict:
        """The backend's name, capabilities, model and (when asked) the manifest identity."""
        if self.error is not None:
            return {"error": self.error}
        from fixable.provenance import model_identity

        backend = self.backend
        return {
            "name": backend.name,
            "capabilities": sorted(backend.capabilities),
            "model_name": backend.model_name,
            "identity": model_identity(backend) if with_identity else None,
            "worker": self.worker,
        }

    def sample_chunk(
        self, task_box: list, chunk: list[Planned], run_path: str, options: dict, retry: bool
    ) -> dict:
        """Sample ``chunk`` into the run as one shard; a ``retry`` first drops keys a
        dead actor wrote before it died. Returns the counts and who did it."""
        task = self._task(task_box)
        run = self._runs.get(run_path)
        if run is None:
            run = self._runs[run_path] = Run(run_path)
        model = self.backend.model_name
        dropped = 0
        if retry:
            present = run.keys(**_unit_filter(model, chunk))
            kept = [p for p in chunk if p.key(model) not in present]
            dropped, chunk = len(chunk) - len(kept), kept
        counts = dict.fromkeys(_COUNTERS, 0)
        if chunk:
            try:
                report = sample_planned(
                    self.backend,
                    task,
                    chunk,
                    run,
                    worker=self.worker,
                    flush_every=len(chunk),  # the whole chunk is one shard
                    **options,
                )
            except FixableError as e:
                return {"error": (type(e).__name__, str(e))}
            counts = {name: getattr(report, name) for name in _COUNTERS}
        return {**counts, "dropped": dropped, "worker": self.worker}

    def _task(self, task_box: list) -> Task:
        # the task travels once per phase as an object ref inside a list (so Ray does not
        # resolve it per call); keep it deserialised per ref
        ref = task_box[0]
        if isinstance(ref, Task):  # called in-process, without Ray
            return ref
        key = ref.hex()
        if key not in self._tasks:
            import ray

            self._tasks.clear()
            self._tasks[key] = ray.get(ref)
        return self._tasks[key]

    def generate(self, requests: list[GenerationRequest], intervention: Intervention):
        return self.backend.generate(requests, intervention)

    def score(self, prompts, completions, which: str):
        return self.backend.score(prompts, completions, which=which)

    def close(self) -> None:
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()


def _unit_filter(model: str, chunk: Sequence[Planned]) -> dict:
    """The keyword filters (``Run.keys``) of a chunk's unit: its model, phase, setting
    and problems."""
    head = chunk[0]
    return {
        "model": model,
        "phase": head.phase,
        "setting": head.intervention.label,
        "problem_id": sorted({p.problem.id for p in chunk}),
    }


def _raise_remote(error: tuple[str, str], where: str) -> None:
    """Raise a user error sent back by an actor as the same class (when it can be built
    from its message) so the CLI prints it in one line."""
    name, message = error
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, FixableError):
        try:
            raise cls(message)
        except TypeError:  # an error class built from other arguments
            pass
    raise FixableError(f"{where}: {message}")


# --------------------------------------------------------------------------- the Ray executor


@dataclass
class _Slot:
    """One actor of a pool and where it stands."""

    index: int
    actor: Any
    ready: bool = False
    worker: str = ""


@dataclass
class ActorLoss:
    """An actor that died, and the chunk it had not finished."""

    worker: str  # host-pid of the actor ("" when it died before starting)
    reason: str
    rollouts: int  # of the unfinished chunk (0 when it was idle or starting)
    replaced: bool


@dataclass
class _Pool:
    backend_name: str
    model: str
    options: dict
    slots: list[_Slot] = field(default_factory=list)
    starting: dict[Any, _Slot] = field(default_factory=dict)  # describe ref → slot
    next_index: int = 0


class RayBackend:
    """The driver's view of a pool of actors that each hold the same backend.

    It answers what ``sample`` asks of a backend before sampling (name, capabilities,
    model, the identity the manifest records) with what the first actor reported, so the
    driver never loads the model itself. ``generate`` and ``score`` run on one actor;
    the ``RayExecutor`` that built it spreads whole plans over all of them.
    """

    def __init__(self, executor: RayExecutor, pool: _Pool, description: dict):
        self.executor = executor
        self.pool = pool
        self.name = description["name"]
        self.capabilities = frozenset(description["capabilities"])
        self._model_name = description["model_name"]
        self._identity = description["identity"] or {}

    @property
    def model_name(self) -> str:
        return self._model_name

    def identity(self) -> dict:
        return dict(self._identity)

    def _any_actor(self):
        ready = [s for s in self.pool.slots if s.ready]
        if not ready:
            raise FixableError(f"no live Ray actor holds {self._model_name!r}")
        return ready[0].actor

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        import ray

        return ray.get(self._any_actor().generate.remote(list(requests), intervention))

    def score(self, prompts, completions, *, which: str = "policy") -> list[list[float]]:
        import ray

        return ray.get(
            self._any_actor().score.remote(list(prompts), [list(c) for c in completions], which)
        )

    def close(self) -> None:
        self.executor._stop_pool(self.pool)


class RayExecutor:
    """Sample on a Ray cluster: one backend per actor, shards written by the actors.

    Args:
        address: ``"auto"`` (the cluster in ``RAY_ADDRESS`` or the one ``ray start``
            started on this machine; a private local one when there is none),
            ``"local"`` (always a new local cluster, stopped with the executor), or a
            cluster address (``HOST:PORT``, ``ray://HOST:10001``). When this process
            already called ``ray.init``, that connection is used.
        actors: actors per model; default: as many as the cluster's GPUs allow when
            ``num_gpus`` > 0, else its CPUs / ``num_cpus``.
        num_cpus, num_gpus: resources each actor reserves (fractions allowed).
        chunk_size: rollouts per chunk (one shard each); default: the plan cut into at
            least ``CHUNKS_PER_ACTOR`` chunks per actor, at most ``batch_size`` each.
        max_actor_failures: actors that may die per model before no replacement is
            started (default: ``actors``); sampling stops when none is left.
        max_attempts: tries of one chunk whose actor keeps dying before the run stops.
        temp_dir: Ray's session directory when this executor starts a cluster (keep it
            short: Ray's socket paths must fit in 107 characters).
        runtime_env: Ray runtime environment for the actors (e.g. ``{"pip": [...]}``).
        start_timeout_s: how long to wait for the first actor of a pool to come up.
    """

    def __init__(
        self,
        address: str = "auto",
        *,
        actors: int | None = None,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        chunk_size: int | None = None,
        max_actor_failures: int | None = None,
        max_attempts: int = 3,
        temp_dir: str | None = None,
        runtime_env: dict | None = None,
        start_timeout_s: float = 600.0,
    ):
        if not isinstance(address, str) or not address:
            raise ConfigError(f"ray address must be 'auto', 'local' or HOST:PORT, got {address!r}")
        self.address = address
        self.actors = None if actors is None else _number("actors", actors, int, 1)
        self.num_cpus = _number("num_cpus", num_cpus, float, 0)
        self.num_gpus = _number("num_gpus", num_gpus, float, 0)
        self.chunk_size = None if chunk_size is None else _number("chunk_size", chunk_size, int, 1)
        self.max_actor_failures = (
            None
            if max_actor_failures is None
            else _number("max_actor_failures", max_actor_failures, int, 0)
        )
        self.max_attempts = _number("max_attempts", max_attempts, int, 1)
        if runtime_env is not None and not isinstance(runtime_env, dict):
            raise ConfigError(
                f'runtime_env must be a JSON object (e.g. {{"pip": ["fixable"]}}), got {runtime_env!r}'
            )
        self.temp_dir = temp_dir
        self.runtime_env = runtime_env
        self.start_timeout_s = _number("start_timeout_s", start_timeout_s, float, 1)
        self.losses: list[ActorLoss] = []  # every actor lost, for the report
        self._started_ray = False
        self._pools: list[_Pool] = []
        self._failures_left: dict[int, int] = {}  # id(pool) → replacements left
        self._actor_class = None  # SamplingActor as a Ray actor class, made once

    # ------------------------------------------------------------ cluster

    def _ray(self):
        try:
            import ray
        except ImportError:
            raise ConfigError(RAY_HINT) from None
        if ray.is_initialized():
            return ray
        local = dict(include_dashboard=False, _temp_dir=self.temp_dir)
        common = dict(runtime_env=self.runtime_env, logging_level=logging.WARNING)
        if self.address == "local":
            ray.init(address="local", **local, **common)
            self._started_ray = True
        elif self.address == "auto":
            try:
                ray.init(address="auto", **common)
            except ConnectionError as e:
                if os.environ.get("RAY_ADDRESS"):  # asked for that cluster, not any
                    raise ConfigError(
                        f"cannot connect to the Ray cluster RAY_ADDRESS="
                        f"{os.environ['RAY_ADDRESS']} names ({e})"
                    ) from None
                log.info("no running Ray cluster found: starting a local one")
                ray.init(address="local", **local, **common)
                self._started_ray = True
        else:
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, ValueError) as e:
                raise ConfigError(
                    f"cannot connect to the Ray cluster at {self.address!r} ({e}); "
                    "start one with `ray start --head` or use --ray local"
                ) from None
        return ray

    def _pool_size(self, ray) -> int:
        if self.actors is not None:
            return self.actors
        resources = ray.cluster_resources()
        if self.num_gpus > 0:
            n = int(resources.get("GPU", 0) // self.num_gpus)
            if n < 1:
                raise ConfigError(
                    f"num_gpus={self.num_gpus:g} per actor, but the cluster has "
                    f"{resources.get('GPU', 0):g} GPUs; give actors=N to wait for an autoscaler"
                )
            return n
        if self.num_cpus == 0:
            raise ConfigError("with num_cpus=0 and num_gpus=0, give the number of actors")
        return max(1, int(resources.get("CPU", 1) // self.num_cpus))

    # ------------------------------------------------------------ pools

    def backend(self, name: str, model: str, options: dict) -> RayBackend:
        """Start the actors of ``model``; returns the driver's view of them once one is up."""
        ray = self._ray()
        started = time.monotonic()
        pool = _Pool(name, model, dict(options or {}))
        size = self._pool_size(ray)
        self._pools.append(pool)
        self._failures_left[id(pool)] = (
            size if self.max_actor_failures is None else self.max_actor_failures
        )
        for _ in range(size):
            self._start_actor(ray, pool)
        first: _Slot | None = None
        deadline = time.monotonic() + self.start_timeout_s
        try:
            while first is None:
                if not pool.starting:
                    raise FixableError(
                        f"every Ray actor for {model!r} died while starting; see the log above"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise FixableError(
                        f"no Ray actor for {model!r} came up in {self.start_timeout_s:.0f} s: "
                        f"the cluster lacks {self.num_cpus:g} CPU / {self.num_gpus:g} GPU per "
                        f"actor (see `ray status`), or the model takes longer to load "
                        f"(-R start_timeout_s=...)"
                    )
                ready, _ = ray.wait(list(pool.starting), num_returns=1, timeout=min(left, 1.0))
                for ref in ready:
                    slot = self._started(ray, pool, ref)
                    first = first or slot
            # the manifest's identity is asked of one actor: hashing weights takes a while
            description = ray.get(first.actor.describe.remote(with_identity=True))
        except BaseException:
            self._stop_pool(pool)
            raise
        log.info(
            "Ray pool for %s: %d actor(s) asked, first up after %.1f s",
            model,
            size,
            time.monotonic() - started,
        )
        return RayBackend(self, pool, description)

    def _start_actor(self, ray, pool: _Pool) -> None:
        if self._actor_class is None:
            self._actor_class = ray.remote(SamplingActor)
        actor = self._actor_class.options(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            max_restarts=0,  # the executor starts replacements itself, and re-queues work
            max_task_retries=0,
        ).remote(pool.backend_name, pool.model, pool.options)
        slot = _Slot(pool.next_index, actor)
        pool.next_index += 1
        pool.slots.append(slot)
        pool.starting[actor.describe.remote(with_identity=False)] = slot

    def _started(self, ray, pool: _Pool, ref) -> _Slot | None:
        """Handle a finished ``describe`` call: the slot is ready (returned), or lost."""
        slot = pool.starting.pop(ref)
        try:
            description = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            self._lose(ray, pool, slot, f"died while starting: {_first_line(e)}", 0)
            return None
        if "error" in description:
            _raise_remote(description["error"], f"building backend {pool.backend_name!r}")
        slot.ready, slot.worker = True, description["worker"]
        return slot

    def _lose(self, ray, pool: _Pool, slot: _Slot, reason: str, rollouts: int) -> None:
        if slot in pool.slots:
            pool.slots.remove(slot)
        left = self._failures_left.get(id(pool), 0)
        replaced = left > 0
        if replaced:
            self._failures_left[id(pool)] = left - 1
            self._start_actor(ray, pool)
        self.losses.append(ActorLoss(slot.worker, reason, rollouts, replaced))
        log.warning(
            "Ray actor %s lost (%s); %d rollouts of its unfinished chunk go to other actors%s",
            slot.worker or f"#{slot.index}",
            reason,
            rollouts,
            ", a replacement is starting" if replaced else "",
        )

    def _stop_pool(self, pool: _Pool) -> None:
        if pool not in self._pools:
            return
        self._pools.remove(pool)
        try:
            import ray
        except ImportError:
            return
        if not ray.is_initialized():
            return
        for slot in pool.slots:
            # killed, not asked to finish: nothing must write into the run after we return
            ray.kill(slot.actor, no_restart=True)
        pool.slots.clear()
        pool.starting.clear()

    def close(self) -> None:
        """Stop every pool, and the cluster when this executor started it."""
        for pool in list(self._pools):
            self._stop_pool(pool)
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ sampling

    def sample_planned(
        self,
        backend: Backend,
        task: Task,
        todo: Sequence[Planned],
        run: Run,
        *,
        report: SampleReport | None = None,
        max_tokens: int = 160,
        batch_size: int = 256,
        flush_every: int = DEFAULT_FLUSH_EVERY,
        score_reference: bool = True,
        worker: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> SampleReport:
        """Sample exactly ``todo`` into ``run`` on the actors of ``backend``; ``worker`` is
        not used (each actor writes as its own host-pid)."""
        if not isinstance(backend, RayBackend) or backend.executor is not self:
            raise ConfigError(
                f"backend {getattr(backend, 'name', backend)!r} was not built by this "
                "RayExecutor: build it with executor.backend(name, model, options)"
            )
        ray = self._ray()
        pool = backend.pool
        model = backend.model_name
        phase = todo[0].phase if todo else PROBE
        if report is None:
            report = SampleReport(str(run.path), model, phase, planned=len(todo))
        remove_redundant_copies(run)
        started = time.monotonic()
        actors = max(1, len(pool.slots))
        size = self.chunk_size or max(
            1, min(batch_size, flush_every, math.ceil(len(todo) / (actors * CHUNKS_PER_ACTOR)))
        )
        queue = collections.deque((chunk, 0) for chunk in chunks(todo, size))
        options = dict(
            max_tokens=max_tokens, batch_size=batch_size, score_reference=score_reference
        )
        task_box = [ray.put(task)]
        run_path = str(Path(run.path).resolve())
        inflight: dict[Any, tuple[_Slot, list[Planned], int]] = {}
        settled = 0  # rollouts of todo sampled now, or found written by a lost actor

        def tick() -> None:
            if progress is not None:
                elapsed = time.monotonic() - started
                progress(
                    Progress(
                        model, phase, len(todo), settled, report.tokens, report.skipped, elapsed
                    )
                )

        tick()
        try:
            while queue or inflight:
                busy = {slot.index for slot, _, _ in inflight.values()}
                for slot in pool.slots:
                    if not queue:
                        break
                    if slot.ready and slot.index not in busy:
                        chunk, attempt = queue.popleft()
                        ref = slot.actor.sample_chunk.remote(
                            task_box, chunk, run_path, options, attempt > 0
                        )
                        inflight[ref] = (slot, chunk, attempt)
                if not inflight and not pool.starting:
                    raise FixableError(
                        f"every Ray actor for {model!r} is lost "
                        f"({len(self.losses)} lost; raise -R max_actor_failures=N); "
                        f"{report.sampled} rollouts of this call are in {run.path} — run the "
                        "same command again to sample the rest"
                    )
                waiting = list(inflight) + list(pool.starting)
                ready, _ = ray.wait(waiting, num_returns=1, timeout=1.0)
                for ref in ready:
                    if ref in pool.starting:
                        self._started(ray, pool, ref)
                        continue
                    slot, chunk, attempt = inflight.pop(ref)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError as e:
                        self._lose(ray, pool, slot, _first_line(e), len(chunk))
                        if attempt + 1 >= self.max_attempts:
                            raise FixableError(
                                f"a chunk of {len(chunk)} rollouts (problems "
                                f"{', '.join(sorted({p.problem.id for p in chunk})[:3])}, …, "
                                f"{chunk[0].phase}/{chunk[0].intervention.label}) lost its actor "
                                f"{attempt + 1} times; the last: {_first_line(e)}"
                            ) from None
                        queue.appendleft((chunk, attempt + 1))
                        continue
                    if "error" in result:
                        _raise_remote(result["error"], f"actor {slot.worker}")
                    for name in _COUNTERS:
                        setattr(report, name, getattr(report, name) + result[name])
                    settled += result["sampled"] + result["dropped"]
                    if result["dropped"]:
                        log.info(
                            "%d rollouts of a re-run chunk were already written by a lost actor",
                            result["dropped"],
                        )
                        report.skipped += result["dropped"]
                    tick()
        except BaseException:
            # stop the actors still sampling: nothing may write into the run after we return
            self._stop_pool(pool)
            raise
        moved = remove_redundant_copies(run)
        if moved:
            log.warning(
                "%d shard(s) held only copies of rollouts already in the run (written by an "
                "actor after it was given up); moved to %s",
                len(moved),
                run.path / QUARANTINE,
            )
        return report

    def summary(self) -> str:
        """One line per lost actor, for the command's report (empty when none was lost)."""
        return "\n".join(
            f"ray: actor {loss.worker or '(starting)'} lost ({loss.reason}); "
            f"{loss.rollouts} unfinished rollouts re-run on other actors"
            + ("; replaced" if loss.replaced else "")
            for loss in self.losses
        )


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] + ("…" if len(text) > 200 else "")


# --------------------------------------------------------------------------- duplicates


def remove_redundant_copies(run: Run) -> list[Path]:
    """Move to ``quarantine/`` every rollout shard all of whose rows are identical copies
    of rows that stay in other shards; returns the shards moved.

    Such shards appear when a worker that was given up for dead (its node stopped
    answering, its driver was killed) still finished its chunk. Copies whose content
    differs are left alone: ``Run.duplicates()`` keeps reporting them.
    """
    duplicates = run.duplicates()
    if duplicates.num_rows == 0:
        return []
    import duckdb

    key = ", ".join(schema.KEY)
    content = [c for c in schema.ROLLOUTS.names if c not in schema.NON_CONTENT]
    files = ", ".join(sql_string(str(p)) for p in run.shard_paths("rollouts"))
    digest = f"md5(CAST(struct_pack({', '.join(content)}) AS VARCHAR))"
    con = duckdb.connect()
    try:
        con.register("duplicate_keys", duplicates.select(list(schema.KEY)))
        source = f"read_parquet([{files}], filename = true)"
        involved = con.sql(
            f"SELECT DISTINCT filename FROM {source} JOIN duplicate_keys USING ({key})"
        ).fetchall()
        names = ", ".join(sql_string(row[0]) for row in involved)
        rows = con.sql(
            f"SELECT filename, {key}, {digest} AS digest FROM {source} WHERE filename IN ({names})"
        ).fetchall()
    finally:
        con.close()
    by_shard: dict[str, dict[tuple, str]] = {}
    for filename, *rest in rows:
        by_shard.setdefault(filename, {})[tuple(rest[:-1])] = rest[-1]
    holders: dict[tuple, list[str]] = {}
    for shard, keys in by_shard.items():
        for k in keys:
            holders.setdefault(k, []).append(shard)
    # the newest copies go first: the older shard was there when the newer one was written
    order = sorted(by_shard, key=lambda s: (os.stat(s).st_mtime_ns, s), reverse=True)
    moved = []
    for shard in order:
        keys = by_shard[shard]
        redundant = all(
            any(other != shard and by_shard[other].get(k) == d for other in holders[k])
            for k, d in keys.items()
        )
        if not redundant:
            continue
        why = (
            f"a redundant copy: each of its {len(keys)} rollouts is also in another shard of "
            "the run with identical content (written by a worker after it was given up); "
            "nothing is missing"
        )
        moved.append(run.quarantine(Path(shard), why, len(keys), corrupt=False).moved_to)
        for k in keys:
            holders[k].remove(shard)
        del by_shard[shard]
    return moved
