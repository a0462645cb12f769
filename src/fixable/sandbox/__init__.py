"""A sandbox for executing model-written Python: contained, limited, and scored only on proof.

Code tasks (``humaneval``, ``cruxeval``) run every candidate here. Each execution gets:

- a fresh process, forked from a small pre-started worker interpreter (one per parallel
  slot), so it does not pay for a new interpreter (benchmarks/bench_sandbox.py compares
  the two);
- resource limits: CPU seconds, address space, file size, open files, and a process
  count enforced through a per-slot unprivileged uid (``RLIMIT_NPROC`` counts per uid and
  is ignored for root, so dropping root is what makes it bite); where a cgroup-v1 memory
  controller is writable, one cgroup per execution caps the memory of all its processes;
- a wall-clock deadline after which the whole execution is killed: the program is PID 1
  of its own PID namespace, so killing it takes every process it forked along;
- a private temporary directory on its own size-limited tmpfs, private ``/tmp``,
  ``/var/tmp``, ``/dev/shm``, a ``/proc`` that shows only its own processes, and every
  other mount read-only in its view (the host's filesystem is untouched);
- a scrubbed environment (the worker is started with an empty one, the program gets
  PATH/HOME/TMPDIR/LANG only);
- no network: the worker lives in a new network namespace with no interfaces up.

Namespaces need root or unprivileged user namespaces. What this machine allows is
detected when the first worker starts and reported by :attr:`Sandbox.isolation`; with
``isolation="required"`` a missing protection is an error instead of a logged warning.

The verdict is decided where the program cannot reach: the untrusted code runs in one
process, the trusted test in another (the *judge*, not dumpable, forked after the program
so none of its memory is the program's), which calls the program's functions across pipes
and gets back plain data only (builtin types, rebuilt on its side). A program passes only
when the judge reports, on a pipe only it holds, that the test returned, and both
processes then exit 0. Patching builtins, ``json``, ``os.write`` or anything else in the
program's process, an object whose ``__eq__`` is always true, or an early ``sys.exit(0)``
all score as failures; the test's source never enters the program's memory.
What it cannot contain is listed in docs/tasks.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import queue
import secrets
import selectors
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from fixable.errors import CapabilityError, ConfigError

log = logging.getLogger(__name__)

ExecutionStatus = Literal["passed", "failed", "timeout", "error"]
IsolationMode = Literal["auto", "required", "off"]
WORKER_SCRIPT = Path(__file__).with_name("worker.py")
# Time the harness allows beyond the program's own deadline (namespace set-up, a loaded
# machine) before it decides the worker itself is stuck and replaces it.
HARNESS_SLACK_S = 30.0
WORKER_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Limits:
    """Resource limits of one execution; validated on construction."""

    timeout_s: float = 10.0  # wall clock for the whole execution, set-up included
    cpu_s: int | None = None  # CPU seconds of the program process; None: ceil(timeout_s)
    memory_mb: int = 1024  # address space (RLIMIT_AS) of each process
    file_size_mb: int = 16  # largest file the program may write (RLIMIT_FSIZE)
    processes: int = 32  # processes and threads of the program's uid (RLIMIT_NPROC)
    open_files: int = 256  # file descriptors per process (RLIMIT_NOFILE)
    output_kb: int = 1024  # stdout + stderr beyond this ends the execution as failed
    tmp_mb: int = 64  # size of the private tmpfs holding the program's directory

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= 3600:
            raise ConfigError(f"sandbox timeout_s must be in (0, 3600], got {self.timeout_s!r}")
        if self.cpu_s is not None and not 1 <= self.cpu_s <= 3600:
            raise ConfigError(f"sandbox cpu_s must be in [1, 3600], got {self.cpu_s!r}")
        for name, low, high in (
            ("memory_mb", 64, 1 << 20),
            ("file_size_mb", 1, 1 << 16),
            ("processes", 1, 4096),
            ("open_files", 16, 65536),
            ("output_kb", 1, 1 << 20),
            ("tmp_mb", 1, 1 << 16),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(
                    f"sandbox {name} must be an integer in [{low}, {high}], got {value!r}"
                )

    def as_request(self) -> dict:
        return {
            "timeout_s": float(self.timeout_s),
            "cpu_s": self.cpu_s or max(1, math.ceil(self.timeout_s)),
            "memory_bytes": self.memory_mb << 20,
            "file_size_bytes": self.file_size_mb << 20,
            "processes": self.processes,
            "open_files": self.open_files,
            "output_bytes": self.output_kb << 10,
            "tmp_mb": self.tmp_mb,
        }


@dataclass(frozen=True)
class Program:
    """What one execution runs: untrusted code, then trusted test code.

    ``code`` (model-written) runs first as ``__main__``. Then ``setup`` and ``test``
    (trusted) run in a separate namespace whose builtins were copied before ``code`` ran;
    ``expose`` names the objects of ``code``'s namespace the test may see (e.g. the
    function under test). The execution passes when ``test`` finishes without an exception.
    """

    code: str
    test: str = ""
    setup: str = ""
    expose: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecutionResult:
    """How one execution ended: passed / failed / timeout / error, and why."""

    status: ExecutionStatus
    reason: str = ""  # empty when passed; otherwise what went wrong, in one line
    output: str = ""  # the last few KB of the program's stdout and stderr
    duration_s: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Isolation:
    """Which protections the workers achieved on this machine."""

    network: bool  # new network namespace: no interface, not even loopback, is up
    pid_namespace: bool  # per execution: the program is PID 1; its end kills all it forked
    mount_namespace: bool  # per execution: private tmpfs /tmp, /var/tmp, /dev/shm and /proc
    read_only_host: bool  # per execution: every other mount is read-only in its view
    uid_drop: bool  # the program runs as an unprivileged per-slot uid (root only)
    user_namespace: bool = False  # namespaces obtained through a user namespace (non-root)
    # Per execution: memory of all its processes together capped (cgroup v1, root only).
    # Without it only each process is capped, so the total is up to processes × memory_mb.
    memory_cgroup: bool = False

    @property
    def missing(self) -> list[str]:
        """The protections this machine could not give."""
        wanted = ("network", "pid_namespace", "mount_namespace", "read_only_host")
        out = [n for n in wanted if not getattr(self, n)]
        if not (self.uid_drop or self.user_namespace):
            out.append("uid_drop")
        return out

    def describe(self) -> str:
        names = ("network", "pid_namespace", "mount_namespace", "read_only_host", "uid_drop")
        have = [n for n in (*names, "user_namespace", "memory_cgroup") if getattr(self, n)]
        text = f"isolation: {', '.join(have) or 'none (limits and a process group only)'}"
        return text + (f"; missing: {', '.join(self.missing)}" if self.missing else "")


class _Worker:
    """One pre-started worker interpreter and its pipes; used by one thread at a time."""

    def __init__(self, slot_uid: int, isolate: bool):
        # The worker's stderr, kept to explain a worker that dies (closed in ``kill``).
        self.log_file = tempfile.TemporaryFile()  # noqa: SIM115
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-I", str(WORKER_SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log_file,
            env=env,
            close_fds=True,
            start_new_session=True,
        )
        self._send({"isolate": isolate, "uid": slot_uid})
        ready = self._receive(time.monotonic() + WORKER_START_TIMEOUT_S)
        if not ready or not ready.get("ready"):
            reason = self._failure("did not start")
            self.kill()
            raise CapabilityError(f"sandbox worker {reason}")
        self.isolation = ready["isolation"]

    def _send(self, message: dict, hidden: tuple[str, str] | None = None) -> None:
        """One framed JSON message; with ``hidden`` (setup, test), those follow as raw bytes."""
        data = json.dumps(message).encode()
        frame = struct.pack(">I", len(data)) + data
        if hidden is not None:
            setup, test = (text.encode() for text in hidden)
            blob = struct.pack(">II", len(setup), len(test)) + setup + test
            frame += struct.pack(">I", len(blob)) + blob
        assert self.process.stdin is not None
        self.process.stdin.write(frame)
        self.process.stdin.flush()

    def _receive(self, deadline: float) -> dict | None:
        assert self.process.stdout is not None
        fd = self.process.stdout.fileno()
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while True:
                need = 4 if len(buffer) < 4 else 4 + struct.unpack(">I", buffer[:4])[0]
                if len(buffer) >= need and len(buffer) > 4:
                    return json.loads(buffer[4:need])
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    return None
                chunk = os.read(fd, max(65536, need - len(buffer)))
                if not chunk:
                    return None
                buffer += chunk

    def _failure(self, what: str) -> str:
        self.log_file.seek(0)
        tail = self.log_file.read().decode("utf-8", "replace").strip().splitlines()[-3:]
        return what + (f" ({' | '.join(tail)})" if tail else "")

    def call(self, request: dict, hidden: tuple[str, str]) -> ExecutionResult:
        deadline = time.monotonic() + request["limits"]["timeout_s"] + HARNESS_SLACK_S
        try:
            self._send(request, hidden)
            reply = self._receive(deadline)
        except (OSError, ValueError) as e:  # ValueError: its pipe was already closed
            reply, why = None, f"worker pipe failed: {e}"
        else:
            why = "worker stopped answering" if self.alive else "worker died"
        if reply is None:
            reason = self._failure(why)
            self.kill()
            return ExecutionResult("error", f"sandbox {reason}")
        return ExecutionResult(
            reply["status"],
            reply.get("reason", ""),
            reply.get("output", ""),
            reply.get("duration_s", 0.0),
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, 9)
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]
        self.log_file.close()

    def close(self) -> None:
        """Ask the worker to finish (EOF on its input), then make sure it did."""
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # type: ignore[union-attr]
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.kill()


def _close_workers(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.close()
    workers.clear()


class Sandbox:
    """Run untrusted Python programs in parallel, each contained and limited.

    Args:
        workers: executions run at once (one worker process each); default: CPU count.
        limits: default limits of every execution (:class:`Limits`).
        isolation: ``"auto"`` uses every protection this machine allows and logs what is
            missing; ``"required"`` raises :class:`fixable.errors.CapabilityError` instead;
            ``"off"`` runs with limits, deadline and token only (for debugging).
        seed: seed of Python's ``random`` in every program, for reproducible executions.

    Use as a context manager or call :meth:`close`; workers also stop when the harness exits.
    """

    def __init__(
        self,
        workers: int | None = None,
        limits: Limits | None = None,
        *,
        isolation: IsolationMode = "auto",
        seed: int = 0,
    ):
        if isolation not in ("auto", "required", "off"):
            raise ConfigError(
                f"sandbox isolation must be 'auto', 'required' or 'off', got {isolation!r}"
            )
        n = workers if workers is not None else (os.cpu_count() or 1)
        if not isinstance(n, int) or not 1 <= n <= 256:
            raise ConfigError(f"sandbox workers must be an integer in [1, 256], got {workers!r}")
        if sys.platform != "linux":
            raise CapabilityError(
                f"the sandbox needs Linux (fork, rlimits, pidfd); this is {sys.platform}"
            )
        self.workers = n
        self.limits = limits or Limits()
        self.mode = isolation
        self.seed = int(seed)
        # Unprivileged uids nobody else uses, one per slot, so RLIMIT_NPROC counts one
        # execution's processes only; random because two sandboxes may run side by side.
        self._uid_base = 1_000_000_000 + secrets.randbelow(10_000) * 65536
        self._started = 0
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._isolation: Isolation | None = None
        self._closed = False
        self._finalizer = weakref.finalize(self, _close_workers, self._all)

    # ── workers ──

    def _start_worker(self) -> _Worker:
        uid = self._uid_base + self._started % 65536
        self._started += 1
        worker = _Worker(uid, isolate=self.mode != "off")
        flags = (
            "network",
            "pid_namespace",
            "mount_namespace",
            "read_only_host",
            "uid_drop",
            "user_namespace",
            "memory_cgroup",
        )
        isolation = Isolation(**{k: bool(worker.isolation.get(k)) for k in flags})
        if self._isolation is None:
            self._isolation = isolation
            if self.mode == "required" and isolation.missing:
                worker.kill()
                raise CapabilityError(
                    f"sandbox isolation='required' but this machine does not allow: "
                    f"{', '.join(isolation.missing)} (needs root or unprivileged user namespaces); "
                    "pass isolation='auto' to run with what is available"
                )
            if self.mode == "auto" and isolation.missing:
                log.warning("sandbox runs without %s on this machine", ", ".join(isolation.missing))
            log.info("sandbox %s", isolation.describe())
        self._all.append(worker)
        return worker

    def _acquire(self) -> _Worker:
        while True:
            if self._closed:
                raise ConfigError("this sandbox is closed; create a new Sandbox")
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                with self._lock:  # below capacity (at first, or after a worker died): start one
                    if len(self._all) < self.workers:
                        return self._start_worker()
                try:
                    worker = self._idle.get(timeout=0.5)
                except queue.Empty:
                    continue
            if worker.alive:
                return worker
            self._release(worker)  # died while idle: drop it, and try again

    def _release(self, worker: _Worker) -> None:
        if worker.alive:
            self._idle.put(worker)
            return
        with self._lock:  # a dead worker frees its slot; the next _acquire starts a new one
            if worker in self._all:
                self._all.remove(worker)

    @property
    def isolation(self) -> Isolation:
        """The protections achieved on this machine (starts a worker to find out)."""
        if self._isolation is None:
            self._release(self._acquire())
        assert self._isolation is not None
        return self._isolation

    # ── executions ──

    def run(self, program: Program, limits: Limits | None = None) -> ExecutionResult:
        """Execute one program and say how it ended."""
        request = {
            "code": program.code,
            "expose": list(program.expose),
            "limits": (limits or self.limits).as_request(),
            "seed": self.seed,
        }
        worker = self._acquire()
        try:
            return worker.call(request, (program.setup, program.test))
        finally:
            self._release(worker)

    def run_many(
        self,
        programs: Sequence[Program],
        limits: Limits | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[ExecutionResult]:
        """Execute many programs, ``workers`` at a time; results in the order given."""
        if not programs:
            return []
        results: list[ExecutionResult | None] = [None] * len(programs)
        done = 0
        done_lock = threading.Lock()

        def one(index: int) -> None:
            nonlocal done
            results[index] = self.run(programs[index], limits)
            with done_lock:
                done += 1
                if progress is not None:
                    progress(done, len(programs))

        with ThreadPoolExecutor(max_workers=min(self.workers, len(programs))) as pool:
            for future in [pool.submit(one, i) for i in range(len(programs))]:
                future.result()
        return [r for r in results if r is not None]

    def close(self) -> None:
        """Stop every worker; the sandbox cannot run anything afterwards."""
        self._closed = True
        with self._lock:
            _close_workers(self._all)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Sandbox(workers={self.workers}, limits={asdict(self.limits)}, isolation={self.mode!r})"


__all__ = ["ExecutionResult", "Isolation", "Limits", "Program", "Sandbox"]
