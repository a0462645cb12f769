"""The sandbox's worker process: forks one contained child per execution of model-written code.

This file is run by path (``python -I worker.py``) by :class:`fixable.sandbox.Sandbox`, never
imported by it, and imports only the standard library: every execution is a ``fork`` of
this small, already-started interpreter, which is what makes the sandbox cheap
(benchmarks/bench_sandbox.py: executions/s against a fresh interpreter per execution).

Process tree of one execution::

    harness ──pipe── worker (one per parallel slot; its own network namespace)
                       └─ supervisor (trusted; new PID + mount namespace; enforces deadline)
                            └─ program (PID 1 of its namespace; limits; unprivileged uid)
                                 └─ anything the program forks (dies with it)

Protocol on stdin/stdout: 4-byte big-endian length + UTF-8 JSON, one request → one reply.
The first message configures the worker; it answers with the isolation it achieved.

The program only counts as *passed* when the trusted test code returned and the program
then wrote a per-execution random token to a pipe only its supervisor reads: exit code 0
alone means nothing (``sys.exit(0)``/``os._exit(0)`` before the asserts, ``atexit`` tricks).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import fcntl
import glob
import json
import os
import resource
import secrets
import selectors
import signal
import stat
import struct
import sys
import time
import traceback

# Linux constants (linux/sched.h, linux/mount.h, linux/prctl.h); the stdlib of 3.10/3.11 lacks them.
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
# Per-mount options that must be repeated when remounting (the kernel keeps them locked).
MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
    "strictatime": 1 << 24,
}
PR_SET_PDEATHSIG, PR_SET_NAME, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 15, 24, 38

_libc = ctypes.CDLL(None, use_errno=True)
# Where the program's private temporary directory lives (on its own tmpfs when a mount namespace exists).
PRIVATE_TMP = "/tmp"
PROGRAM_DIR_NAME = "fixable-sandbox"
CGROUP_V1_MEMORY = "/sys/fs/cgroup/memory"
CGROUP_PREFIX = "fixable-sandbox-"
OUTPUT_TAIL_BYTES = 4096
# Names that must stay importable for the program once it runs as an unprivileged uid.
PREIMPORT = (
    "typing",
    "math",
    "re",
    "collections",
    "itertools",
    "functools",
    "string",
    "random",
    "heapq",
    "bisect",
    "copy",
    "hashlib",
    "fractions",
    "decimal",
    "statistics",
    "operator",
    "dataclasses",
    "datetime",
    "json",
)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None):
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    rc = _libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    _check(rc, f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


# ── messages ──────────────────────────────────────────────────────────────────────────


def read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> dict | None:
    try:
        (size,) = struct.unpack(">I", read_exact(fd, 4))
        return json.loads(read_exact(fd, size))
    except EOFError:
        return None


def write_message(fd: int, message: dict) -> None:
    data = json.dumps(message).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        data = data[os.write(fd, data) :]


# ── filesystem view ───────────────────────────────────────────────────────────────────


def _others_can_search(path: str) -> bool:
    return bool(os.stat(path).st_mode & stat.S_IXOTH)


def blocked_paths(needed: list[str]) -> dict[str, list[str]]:
    """For each needed path an unprivileged uid cannot reach, its first closed ancestor.

    Returns ``{closed ancestor: [needed paths below it, outermost only]}``; e.g. a Python
    installed under ``/root/.pyenv`` (``/root`` is mode 700) gives
    ``{"/root": ["/root/.pyenv/versions/3.11.7"]}``.
    """
    out: dict[str, list[str]] = {}
    for path in sorted({os.path.realpath(p) for p in needed if os.path.isdir(p)}):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            ancestor = "/" + "/".join(parts[:depth])
            if not _others_can_search(ancestor):
                below = out.setdefault(ancestor, [])
                if not any(path == b or path.startswith(b + "/") for b in below):
                    below.append(path)
                break
    return out


def expose_blocked_paths(blocked: dict[str, list[str]]) -> None:
    """Cover each closed ancestor with an empty tmpfs and bind the needed paths back into it.

    Runs inside the execution's own mount namespace, so the host is untouched; the program
    sees e.g. ``/root`` holding only the Python installation, nothing else of root's home.
    """
    for ancestor, paths in blocked.items():
        fds = [os.open(p, os.O_PATH | os.O_DIRECTORY) for p in paths]
        mount("tmpfs", ancestor, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
        for path, fd in zip(paths, fds, strict=True):
            os.makedirs(path, mode=0o755, exist_ok=True)
            mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            os.close(fd)


def _unescape_mount_path(path: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("040", "011", "012", "134"):
        path = path.replace("\\" + code, chr(int(code, 8)))
    return path


def read_only_host() -> int:
    """Remount every mount of this (private) namespace read-only; returns how many refused.

    ``MS_BIND`` makes each remount change this namespace's view only, never the host's
    filesystem. Runs before the private tmpfs mounts, which stay writable.
    """
    with open("/proc/self/mountinfo") as f:
        entries = [line.split(" ") for line in f.read().splitlines()]
    refused = 0
    for fields in entries:
        mount_point = _unescape_mount_path(fields[4])
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for option in fields[5].split(","):
            flags |= MOUNT_OPTION_FLAGS.get(option, 0)
        try:
            mount(None, mount_point, None, flags)
        except OSError:
            refused += 1  # e.g. a mount point hidden under another mount
    return refused


def own_memory_cgroup() -> str | None:
    """This process's cgroup (v1) memory directory, where execution cgroups are created."""
    try:
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if "memory" in controllers.split(","):
                    base = os.path.join(CGROUP_V1_MEMORY, path.lstrip("/"))
                    return base if os.path.isdir(base) else None
    except (OSError, ValueError):
        pass
    return None


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def create_memory_cgroup(parent: str, limit_bytes: int) -> str:
    """A child memory cgroup capping the memory (and swap) of everything put into it."""
    # Named after the worker (so a stale one can be told from a live one) plus a random
    # suffix, since PIDs wrap around.
    path = os.path.join(parent, f"{CGROUP_PREFIX}{os.getppid()}-{secrets.token_hex(4)}")
    os.mkdir(path)
    _write(os.path.join(path, "memory.limit_in_bytes"), str(limit_bytes))
    with contextlib.suppress(OSError):  # only where swap accounting is on
        _write(os.path.join(path, "memory.memsw.limit_in_bytes"), str(limit_bytes))
    return path


def memory_cgroup_killed(path: str) -> bool:
    """Whether the kernel's OOM killer acted inside the cgroup."""
    try:
        with open(os.path.join(path, "memory.oom_control")) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1]) > 0
        with open(os.path.join(path, "memory.failcnt")) as f:
            return int(f.read()) > 0
    except (OSError, ValueError):
        return False


def remove_stale_cgroups(parent: str) -> None:
    """Remove the cgroups of workers that were killed mid-execution (their worker is gone)."""
    for path in glob.glob(os.path.join(parent, CGROUP_PREFIX + "*")):
        worker = os.path.basename(path)[len(CGROUP_PREFIX) :].split("-", 1)[0]
        try:
            os.kill(int(worker), 0)
            continue  # a live worker's, possibly just created and still empty
        except (ValueError, ProcessLookupError):
            pass
        except PermissionError:
            continue
        with contextlib.suppress(OSError):
            os.rmdir(path)


def remove_cgroup(path: str) -> None:
    for _ in range(50):  # the last processes of the namespace may still be leaving it
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01)


def private_filesystem(config: dict, tmp_mb: int) -> str:
    """Give this (supervisor) process a private mount table; return the program's directory."""
    unshare(CLONE_NEWNS)
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    if config["uid"] is not None:
        expose_blocked_paths(config["blocked"])
    if config["read_only_host"]:
        read_only_host()
    tmp_options = f"size={tmp_mb}m,nr_inodes=4096,mode=1777"
    # Every world-writable place gets its own throwaway tmpfs: nothing written there
    # reaches the host or another execution, and it all vanishes with the namespace.
    for place in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
        if os.path.isdir(place) and not os.path.islink(place):
            mount("tmpfs", place, "tmpfs", MS_NOSUID | MS_NODEV, tmp_options)
    program_dir = os.path.join(PRIVATE_TMP, PROGRAM_DIR_NAME)
    os.mkdir(program_dir, 0o700)
    return program_dir


# ── the program process ───────────────────────────────────────────────────────────────


def _set_limits(limits: dict, per_uid: bool) -> None:
    cpu = int(limits["cpu_s"])
    plan = [
        (resource.RLIMIT_CPU, cpu, cpu + 1),  # SIGXCPU at the soft limit, SIGKILL at the hard one
        (resource.RLIMIT_AS, limits["memory_bytes"], limits["memory_bytes"]),
        (resource.RLIMIT_FSIZE, limits["file_size_bytes"], limits["file_size_bytes"]),
        (resource.RLIMIT_NOFILE, limits["open_files"], limits["open_files"]),
        (resource.RLIMIT_CORE, 0, 0),
    ]
    # RLIMIT_NPROC counts every process of the real uid: meaningful only for the sandbox's
    # own uid (as root it is not even enforced, and for a user it would count their shell).
    if per_uid:
        plan.append((resource.RLIMIT_NPROC, limits["processes"], limits["processes"]))
    for which, soft, hard in plan:
        resource.setrlimit(which, (soft, hard))


def _drop_capabilities() -> None:
    """Empty the bounding set and every capability set, so no execve can grant any back."""
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) != 0:
            break  # past the last capability this kernel knows
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable × 2 words, all zero
    _check(_libc.capset(header, data), "capset")


def _describe_exception(exc: BaseException, sources: dict[str, str]) -> str:
    """One line: exception type and message, and where in the trusted code it was raised."""
    try:
        message = str(exc)[:300] if not isinstance(exc, SystemExit) else f"code {exc.code!r}"
    except BaseException:  # noqa: BLE001 — an exception type written to break its __str__
        message = "(message could not be read)"
    where = ""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        if frame.filename in sources:
            where = f" at {frame.filename} line {frame.lineno}"
            lines = sources[frame.filename].splitlines()
            if not message and 0 < (frame.lineno or 0) <= len(lines):
                where += f": {lines[frame.lineno - 1].strip()[:160]}"  # a bare assert: show it
            break
    return f"{type(exc).__name__}{': ' + message if message else ''}{where}"


def run_program(
    request: dict, config: dict, program_dir: str, out_fd: int, done_fd: int, token: str
):
    """Body of the program process: contain it, run untrusted code, then the trusted test."""
    try:
        report_fd = contain(request, config, program_dir, out_fd, done_fd)
    except BaseException as exc:  # noqa: BLE001 — the harness's fault, not the program's
        os.write(done_fd, (token + json.dumps({"ok": False, "error": repr(exc)})).encode())
        os._exit(71)
    execute(request, report_fd, token)


def contain(request: dict, config: dict, program_dir: str, out_fd: int, done_fd: int) -> int:
    """Limits, namespaces, descriptors, environment and uid of the program; returns its report fd."""
    if request.get("cgroup_fd") is not None:  # first, so every process it forks is counted
        os.write(request["cgroup_fd"], b"0")
    os.setsid()
    if config["pid_namespace"] and config["mount_namespace"]:
        # A /proc of this namespace only: no other process, no other environment.
        with contextlib.suppress(OSError):
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Move the pipes out of the way first, so that placing them on 0-3 clobbers nothing.
    devnull = fcntl.fcntl(os.open(os.devnull, os.O_RDONLY), fcntl.F_DUPFD, 100)
    out_fd = fcntl.fcntl(out_fd, fcntl.F_DUPFD, 100)
    done_fd = fcntl.fcntl(done_fd, fcntl.F_DUPFD, 100)
    os.dup2(devnull, 0)
    os.dup2(out_fd, 1)
    os.dup2(out_fd, 2)
    report_fd = os.dup2(done_fd, 3)
    os.closerange(4, 1 << 16)  # the worker's protocol pipes and everything else
    _set_limits(request["limits"], per_uid=config["uid"] is not None)
    os.chdir(program_dir)
    os.environ.clear()
    os.environ.update(
        {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": program_dir, "TMPDIR": program_dir}
        | {"LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    )
    uid = config["uid"]
    if uid is not None:
        os.chown(program_dir, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif config["user_namespace"]:
        _drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Only now: changing uid clears the parent-death signal. If the supervisor dies (the
    # harness went away), the program dies, and with it its PID namespace.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout = open(1, "w", closefd=False, errors="replace")  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, errors="replace")  # noqa: SIM115
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.argv = ["program"]
    sys.path[:0] = [program_dir]
    return report_fd


def execute(request: dict, report_fd: int, token: str) -> None:
    """Run the untrusted program, then the trusted test; report with the token; exit."""
    import random

    random.seed(request.get("seed", 0))  # programs that draw random numbers are reproducible

    # Snapshot taken before any untrusted code runs: the test sees these builtins even if
    # the program rebinds ``builtins.abs`` or ``builtins.isinstance``.
    pristine_builtins = dict(builtins.__dict__)
    sources = {"<setup>": request["setup"], "<test>": request["test"]}
    outcome = {"ok": False, "reason": ""}
    stage = "program"
    try:
        program_ns = {"__name__": "__main__", "__builtins__": builtins}
        exec(compile(request["code"], "<program>", "exec"), program_ns)
        stage = "test"
        sys.settrace(None)  # a trace function left by the program could skip test lines
        sys.setprofile(None)
        test_ns = {"__name__": "__main__", "__builtins__": dict(pristine_builtins)}
        if request["setup"]:
            exec(compile(request["setup"], "<setup>", "exec"), test_ns)
        for name in request["expose"]:
            if name not in program_ns:
                raise NameError(f"the program does not define {name!r}")
            test_ns[name] = program_ns[name]
        exec(compile(request["test"], "<test>", "exec"), test_ns)
        outcome = {"ok": True, "reason": ""}
    except BaseException as exc:  # noqa: BLE001 — SystemExit before the tests is a failure too
        try:
            if isinstance(exc, SystemExit) and stage == "program":
                reason = f"program called sys.exit({exc.code!r}) before the tests ran"
            else:
                reason = f"{stage}: {_describe_exception(exc, sources)}"
        except BaseException:  # noqa: BLE001
            reason = f"{stage}: an exception that could not be described"
        outcome = {"ok": False, "reason": reason}
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110 — the program may have closed them
        pass
    message = (token + json.dumps(outcome)).encode()
    try:
        os.write(report_fd, message)
    finally:
        os._exit(0)


# ── the supervisor process ────────────────────────────────────────────────────────────


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def supervise(request: dict, config: dict) -> dict:
    """Run one execution in fresh namespaces under a wall-clock deadline; return its result."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    started = time.monotonic()
    limits = request["limits"]
    if config["pid_namespace"]:
        unshare(CLONE_NEWPID)
    if config["memory_cgroup"]:  # before the filesystem turns read-only in this namespace
        request["cgroup"] = create_memory_cgroup(config["cgroup_parent"], limits["memory_bytes"])
        request["cgroup_fd"] = os.open(os.path.join(request["cgroup"], "cgroup.procs"), os.O_WRONLY)
    if config["mount_namespace"]:
        program_dir = private_filesystem(config, limits["tmp_mb"])
    else:
        import tempfile

        program_dir = tempfile.mkdtemp(prefix="fixable-sandbox-")
        if config["uid"] is not None:
            os.chmod(program_dir, 0o700)
    out_r, out_w = os.pipe()
    done_r, done_w = os.pipe()
    token = secrets.token_hex(16)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(out_r)
            os.close(done_r)
            run_program(request, config, program_dir, out_w, done_w, token)
        finally:
            os._exit(70)
    os.close(out_w)
    os.close(done_w)
    pidfd = os.pidfd_open(pid)
    selector = selectors.DefaultSelector()
    selector.register(out_r, selectors.EVENT_READ, "out")
    selector.register(done_r, selectors.EVENT_READ, "done")
    selector.register(pidfd, selectors.EVENT_READ, "exit")
    tail, out_bytes, report = b"", 0, b""
    deadline = started + limits["timeout_s"]
    killed_for = ""
    exited = False
    while not exited:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed_for = "timeout"
            break
        for key, _ in selector.select(remaining):
            if key.data == "exit":
                exited = True
                continue
            chunk = os.read(key.fd, 65536)
            if not chunk:
                selector.unregister(key.fd)
            elif key.data == "out":
                out_bytes += len(chunk)
                tail = (tail + chunk)[-OUTPUT_TAIL_BYTES:]
                if out_bytes > limits["output_bytes"]:
                    killed_for = "output"
            elif len(report) < 4096:
                report += chunk
        if killed_for:
            break
    # PID 1 of a namespace takes every process in it along; without one, kill its group.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    if not config["pid_namespace"]:  # the group again: members may have forked meanwhile
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    # Drain what was written before the end (never blocks: nothing holds the pipes now,
    # or, without a PID namespace, stop after a short grace period).
    for fd in (out_r, done_r):
        os.set_blocking(fd, False)
        try:
            while chunk := os.read(fd, 65536):
                if fd == out_r:
                    tail = (tail + chunk)[-OUTPUT_TAIL_BYTES:]
                elif len(report) < 4096:
                    report += chunk
        except BlockingIOError:
            pass
        os.close(fd)
    os.close(pidfd)
    if not config["mount_namespace"]:
        import shutil

        shutil.rmtree(program_dir, ignore_errors=True)
    out_of_memory = False
    if request.get("cgroup"):  # removed by the worker, whose view of /sys is writable
        os.close(request["cgroup_fd"])
        out_of_memory = memory_cgroup_killed(request["cgroup"])
    cpu_s = usage.ru_utime + usage.ru_stime
    result = classify(status, report, token, killed_for, cpu_s, request["limits"], out_of_memory)
    if request.get("cgroup"):
        result["cgroup"] = request["cgroup"]  # for the worker to remove
    result["output"] = tail.decode("utf-8", "replace")
    result["duration_s"] = round(time.monotonic() - started, 6)
    return result


def classify(
    status: int,
    report: bytes,
    token: str,
    killed_for: str,
    cpu_s: float,
    limits: dict,
    out_of_memory: bool = False,
) -> dict:
    """Turn how the program ended into passed / failed / timeout with a reason."""
    if killed_for == "timeout":
        return {
            "status": "timeout",
            "reason": f"wall-clock limit of {limits['timeout_s']:g}s exceeded; killed the process group",
        }
    if killed_for == "output":
        return {
            "status": "failed",
            "reason": f"wrote more than {limits['output_bytes']} bytes of output",
        }
    exited_cleanly = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    text = report.decode("utf-8", "replace")
    if text.startswith(token):
        try:
            outcome = json.loads(text[len(token) :])
        except ValueError:
            outcome = {"ok": False, "reason": "malformed completion report"}
        if "error" in outcome:
            return {
                "status": "error",
                "reason": f"sandbox could not contain the program: {outcome['error']}",
            }
        if not outcome.get("ok"):
            return {"status": "failed", "reason": str(outcome.get("reason", ""))[:1000]}
        if exited_cleanly:
            return {"status": "passed", "reason": ""}
        return {
            "status": "failed",
            "reason": f"tests ran but the program then ended with {_ending(status)}",
        }
    if out_of_memory:
        return {
            "status": "failed",
            "reason": f"memory limit of {limits['memory_bytes'] >> 20} MB for the whole execution "
            f"exceeded ({_ending(status)})",
        }
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum == signal.SIGXCPU or (signum == signal.SIGKILL and cpu_s >= limits["cpu_s"]):
            return {"status": "timeout", "reason": f"CPU-time limit of {limits['cpu_s']}s exceeded"}
        if signum == signal.SIGXFSZ:
            return {
                "status": "failed",
                "reason": f"file-size limit of {limits['file_size_bytes']} bytes exceeded",
            }
    return {"status": "failed", "reason": f"{_ending(status)} before the tests finished"}


def _ending(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {_signal_name(os.WTERMSIG(status))}"
    return f"exited with code {os.WEXITSTATUS(status) if os.WIFEXITED(status) else status}"


# ── the worker ────────────────────────────────────────────────────────────────────────


def probe_isolation(config: dict) -> dict:
    """Which namespaces this kernel lets us create, tried in a throwaway child."""
    found = {
        "pid_namespace": False,
        "mount_namespace": False,
        "read_only_host": False,
        "memory_cgroup": False,
    }
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        got = {}
        try:
            unshare(CLONE_NEWPID)
            got["pid_namespace"] = True
        except OSError:
            got["pid_namespace"] = False
        try:
            unshare(CLONE_NEWNS)
            mount(None, "/", None, MS_REC | MS_PRIVATE)
            if config["uid"] is not None:
                expose_blocked_paths(config["blocked"])
            mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m")
            got["mount_namespace"] = True
        except OSError:
            got["mount_namespace"] = False
        got["memory_cgroup"] = False
        if config["uid"] is not None and config["cgroup_parent"]:  # real root only
            try:
                remove_cgroup(create_memory_cgroup(config["cgroup_parent"], 64 << 20))
                got["memory_cgroup"] = True
            except OSError:
                pass
        got["read_only_host"] = False
        if got["mount_namespace"]:
            read_only_host()
            # The root mount must now be read-only here (it stays writable on the host).
            got["read_only_host"] = bool(os.statvfs("/").f_flag & os.ST_RDONLY)
        os.write(w, json.dumps(got).encode())
        os._exit(0)
    os.close(w)
    data = b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    os.waitpid(pid, 0)
    found.update(json.loads(data or b"{}"))
    return found


def enter_network_namespace() -> tuple[bool, bool]:
    """Leave the host's network: as root directly, otherwise inside a new user namespace.

    Returns (network isolated, inside a user namespace).
    """
    try:
        unshare(CLONE_NEWNET)
        return True, False
    except OSError:
        pass
    uid, gid = os.getuid(), os.getgid()
    try:
        unshare(CLONE_NEWUSER | CLONE_NEWNET)
    except OSError:
        return False, False
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    return True, True


def interpreter_paths() -> list[str]:
    """Directories the program's Python needs to read: its installation and import path."""
    paths = [sys.prefix, sys.exec_prefix, sys.base_prefix, os.path.dirname(sys.executable)]
    return paths + [p for p in sys.path if p and os.path.isdir(p)]


def set_up(config: dict) -> dict:
    """Enter what isolation this machine allows; fill ``config`` and return what was achieved."""
    achieved = {
        "network": False,
        "user_namespace": False,
        "pid_namespace": False,
        "mount_namespace": False,
        "read_only_host": False,
        "memory_cgroup": False,
        "uid_drop": False,
    }
    if config["isolate"]:
        achieved["network"], achieved["user_namespace"] = enter_network_namespace()
    # Only real root can switch to another uid (inside a user namespace we map just one).
    if not (config["isolate"] and os.geteuid() == 0 and not achieved["user_namespace"]):
        config["uid"] = None
    config["user_namespace"] = achieved["user_namespace"]
    config["blocked"] = blocked_paths(interpreter_paths()) if config["uid"] is not None else {}
    config["cgroup_parent"] = own_memory_cgroup() if config["uid"] is not None else None
    if config["cgroup_parent"]:
        remove_stale_cgroups(config["cgroup_parent"])
    if config["isolate"]:
        achieved.update(probe_isolation(config))
    if config["uid"] is not None and config["blocked"] and not achieved["mount_namespace"]:
        config["uid"] = None  # the program could not even import its standard library
        achieved["memory_cgroup"] = False
    achieved["uid_drop"] = config["uid"] is not None
    config.update(achieved)
    return achieved


def main() -> None:
    os.chdir("/")
    inp, out = 0, os.dup(1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # stray prints must not corrupt the protocol
    config = read_message(inp)
    if config is None:
        return
    # Readable once the harness exits, even mid-execution: then everything here must go.
    harness = os.pidfd_open(os.getppid())
    achieved = set_up(config)
    for name in PREIMPORT:
        __import__(name)
    write_message(out, {"ready": True, "isolation": achieved, "pid": os.getpid()})
    while (request := read_message(inp)) is not None:
        reply_r, reply_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reply_r)
            try:
                result = supervise(request, config)
            except BaseException as exc:  # noqa: BLE001 — reported, never raised past the fork
                result = {"status": "error", "reason": f"sandbox supervisor failed: {exc!r}"}
            try:
                os.write(reply_w, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(reply_w)
        data = b""
        with selectors.DefaultSelector() as selector:
            selector.register(reply_r, selectors.EVENT_READ, "reply")
            selector.register(harness, selectors.EVENT_READ, "harness")
            while True:
                events = {key.data for key, _ in selector.select()}
                if "harness" in events:
                    # The supervisor's death signal takes the program (and its namespace) along.
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    return
                chunk = os.read(reply_r, 65536)
                if not chunk:
                    break
                data += chunk
        os.close(reply_r)
        os.waitpid(pid, 0)
        try:
            result = json.loads(data)
        except ValueError:
            result = {"status": "error", "reason": "sandbox supervisor died without a result"}
        if result.get("cgroup"):
            remove_cgroup(result.pop("cgroup"))
        result["id"] = request.get("id")
        write_message(out, result)


if __name__ == "__main__":
    main()
