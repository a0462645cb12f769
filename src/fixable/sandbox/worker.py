"""The sandbox's worker process: forks one contained child per execution of model-written code.

This file is run by path (``python -I worker.py``) by :class:`fixable.sandbox.Sandbox`, never
imported by it, and imports only the standard library: every execution is a ``fork`` of
this small, already-started interpreter, which is what makes the sandbox cheap
(benchmarks/bench_sandbox.py: executions/s against a fresh interpreter per execution).

Process tree of one execution::

    harness ──pipe── worker (one per parallel slot; its own network namespace)
                       └─ supervisor (trusted; new PID + mount namespace; enforces deadline)
                            ├─ program (untrusted code; PID 1 of its namespace; limits; unprivileged uid)
                            │    └─ anything the program forks (dies with it)
                            └─ judge (trusted test; same limits; not dumpable; calls the program)

Protocol on stdin/stdout: 4-byte big-endian length + UTF-8 JSON, one request → one reply.
The first message configures the worker; it answers with the isolation it achieved. Each
request is followed by a length-prefixed blob holding the trusted setup and test, which
only the judge ever decodes.

The verdict is the judge's: the program passes only when the judge reported, on a pipe
the program never holds, that the test returned, and both processes exited with code 0.
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
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NAME, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = (
    1,
    4,
    15,
    24,
    38,
)

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


# ── values across the process boundary ────────────────────────────────────────────────
#
# The judge (trusted) calls the program's functions through pipes. Arguments and return
# values cross as tagged JSON and are rebuilt on the judge's side from the builtin types
# only: an object with an always-true ``__eq__``, a ``str`` subclass, anything the
# program built never reaches the test. Containers: list, tuple, dict, set, frozenset;
# scalars: None, bool, int, float, complex, str, bytes, bytearray.

MAX_VALUE_BYTES = 16 << 20  # a reply larger than this fails the execution
MAX_DEPTH = 200


def encode_value(value, depth: int = 0):
    """A JSON-able form of plain data; raises TypeError for anything else."""
    if depth > MAX_DEPTH:
        raise TypeError("a value nested deeper than 200 levels")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        number = int.__index__(value)
        return number if -(1 << 52) < number < 1 << 52 else {"i": format(number, "x")}
    if isinstance(value, float):
        return {"f": float.hex(float(value))}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return {"c": [float.hex(value.real), float.hex(value.imag)]}
    if isinstance(value, bytes):
        return {"b": bytes(value).hex()}
    if isinstance(value, bytearray):
        return {"y": bytes(value).hex()}
    if isinstance(value, tuple):
        return {"t": [encode_value(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, list):
        return [encode_value(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, dict):
        return {
            "d": [
                [encode_value(k, depth + 1), encode_value(v, depth + 1)]
                for k, v in dict.items(value)
            ]
        }
    if isinstance(value, frozenset):
        return {"z": [encode_value(v, depth + 1) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"s": [encode_value(v, depth + 1) for v in set.__iter__(value)]}
    raise TypeError(f"a {type(value).__name__} is not plain data")


def decode_value(data, depth: int = 0):
    """Rebuild a value from :func:`encode_value`'s form using builtin types only."""
    if depth > MAX_DEPTH:
        raise ValueError("a value nested deeper than 200 levels")
    kind = type(data)
    if data is None or kind in (bool, int, str, float):
        return data
    if kind is list:
        return [decode_value(v, depth + 1) for v in data]
    if kind is not dict or len(data) != 1:
        raise ValueError(f"malformed value of type {kind.__name__}")
    ((tag, body),) = data.items()
    if tag == "i" and type(body) is str:
        return int(body, 16)
    if tag == "f" and type(body) is str:
        return float.fromhex(body)
    if tag == "c" and type(body) is list and len(body) == 2:
        return complex(float.fromhex(body[0]), float.fromhex(body[1]))
    if tag in ("b", "y") and type(body) is str:
        return bytes.fromhex(body) if tag == "b" else bytearray.fromhex(body)
    if type(body) is not list:
        raise ValueError(f"malformed value tagged {tag!r}")
    items = [decode_value(v, depth + 1) for v in body] if tag != "d" else None
    if tag == "t":
        return tuple(items)
    if tag == "s":
        return set(items)
    if tag == "z":
        return frozenset(items)
    if tag == "d":
        out = {}
        for pair in body:
            if type(pair) is not list or len(pair) != 2:
                raise ValueError("malformed dict entry")
            out[decode_value(pair[0], depth + 1)] = decode_value(pair[1], depth + 1)
        return out
    raise ValueError(f"unknown value tag {tag!r}")


def read_limited_message(fd: int, limit: int) -> dict | None:
    """One framed message of at most ``limit`` bytes (larger: ValueError); None at EOF."""
    try:
        (size,) = struct.unpack(">I", read_exact(fd, 4))
        if size > limit:
            raise ValueError(f"a message of {size} bytes, over the limit of {limit}")
        return json.loads(read_exact(fd, size))
    except EOFError:
        return None


# ── the program process (untrusted) ───────────────────────────────────────────────────


def run_program(request: dict, config: dict, program_dir: str, fds: dict, hidden: bytearray):
    """Body of the program process: contain it, run untrusted code, then answer the judge's calls.

    ``hidden`` holds the test source in this process's copy of the supervisor's memory; it
    is zeroed before anything else, so the program cannot read the tests it is judged by.
    """
    hidden[:] = bytearray(len(hidden))
    try:
        contain(request, config, program_dir, fds, mount_proc=True)
    except BaseException as exc:  # noqa: BLE001 — the harness's fault, not the program's
        os.write(fds["error"], json.dumps({"error": repr(exc)}).encode())
        os._exit(71)
    serve_program(request, call_fd=3, reply_fd=4)


def serve_program(request: dict, call_fd: int, reply_fd: int) -> None:
    """Run the untrusted code, tell the judge how it went, then answer calls until EOF.

    Nothing here decides the verdict: the judge, in another process, reads only plain
    data from these replies. Whatever the program patches in this process (builtins,
    ``json``, ``os.write``, this very function) can at worst make its replies wrong.
    """
    import random

    random.seed(request.get("seed", 0))  # programs that draw random numbers are reproducible
    program_ns = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(request["code"], "<program>", "exec"), program_ns)
        ready = {"ready": True, "functions": [], "values": {}}
        for name in request["expose"]:
            if name not in program_ns:
                continue
            if callable(program_ns[name]):
                ready["functions"].append(name)
            else:  # data the test reads (sent once, as plain data) or a failure to send it
                try:
                    ready["values"][name] = encode_value(program_ns[name])
                except BaseException as exc:  # noqa: BLE001
                    ready["functions"].append(name)  # calling it says what it is not
                    ready.setdefault("unsendable", {})[name] = f"{exc}"[:300]
    except BaseException as exc:  # noqa: BLE001 — SystemExit before the tests is a failure too
        try:
            if isinstance(exc, SystemExit):
                reason = f"program called sys.exit({exc.code!r}) before the tests ran"
            else:
                reason = f"program: {_describe_exception(exc, {})}"
        except BaseException:  # noqa: BLE001
            reason = "program: an exception that could not be described"
        ready = {"ready": False, "reason": reason}
    sys.settrace(None)
    sys.setprofile(None)
    write_message(reply_fd, ready)
    while (message := read_message(call_fd)) is not None:
        try:
            function = program_ns[message["name"]]
            args = decode_value(message["args"])
            kwargs = decode_value(message["kwargs"])
            value = function(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 — the test sees it as the call's exception
            try:
                reply = {"raised": [type(exc).__name__, str(exc)[:300]]}
            except BaseException:  # noqa: BLE001
                reply = {"raised": [type(exc).__name__, ""]}
        else:
            try:
                reply = {"value": encode_value(value)}
            except BaseException as exc:  # noqa: BLE001
                reply = {"unsendable": f"{exc}"[:300]}
        write_message(reply_fd, reply)
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(0)


# ── the judge process (trusted) ───────────────────────────────────────────────────────


class ProgramError(Exception):
    """An exception the program's function raised whose type is not a builtin one."""


class ProgramEnded(BaseException):
    """The program process ended while the test was calling it (not catchable as Exception)."""


class RemoteFunction:
    """Stands in the test for a function of the program: calls it across the pipes."""

    def __init__(self, name: str, call_fd: int, reply_fd: int):
        self.__name__ = name
        self._call_fd, self._reply_fd = call_fd, reply_fd

    def __call__(self, *args, **kwargs):
        write_message(
            self._call_fd,
            {
                "name": self.__name__,
                "args": encode_value(list(args)),
                "kwargs": encode_value(kwargs),
            },
        )
        reply = read_limited_message(self._reply_fd, MAX_VALUE_BYTES)
        if reply is None:
            raise ProgramEnded(f"the program ended while {self.__name__}() was running")
        if "value" in reply:
            return decode_value(reply["value"])
        if "unsendable" in reply:
            raise TypeError(f"{self.__name__}() returned {reply['unsendable']}")
        name, message = (list(reply.get("raised") or ["", ""]) + ["", ""])[:2]
        name, message = str(name)[:100], str(message)[:300]
        builtin = getattr(builtins, name, None)
        if isinstance(builtin, type) and issubclass(builtin, Exception):
            raise builtin(message)
        raise ProgramError(f"{name}: {message}" if message else name)

    def __repr__(self) -> str:
        return f"<function {self.__name__} of the program>"


def run_judge(request: dict, config: dict, program_dir: str, fds: dict, hidden: bytearray, token):
    """Body of the judge process: contain it, run the trusted test against the program, report.

    The judge is forked from the supervisor *after* the program process, never runs the
    program's code, and cannot be traced by it (not dumpable); its report pipe exists
    only here. What it reports is the verdict.
    """
    try:
        setup, test = split_hidden(hidden)
        contain(request, config, "/", fds, mount_proc=False, dumpable=False)
    except BaseException as exc:  # noqa: BLE001 — the harness's fault, not the program's
        os.write(fds["error"], (token + json.dumps({"ok": False, "error": repr(exc)})).encode())
        os._exit(71)
    outcome = judge(request, setup, test, call_fd=4, reply_fd=5)
    with contextlib.suppress(BaseException):
        sys.stdout.flush()
        sys.stderr.flush()
    try:
        os.write(3, (token + json.dumps(outcome)).encode())
    finally:
        os._exit(0)


def split_hidden(hidden: bytearray) -> tuple[str, str]:
    setup_size, test_size = struct.unpack(">II", hidden[:8])
    setup = hidden[8 : 8 + setup_size].decode()
    return setup, hidden[8 + setup_size : 8 + setup_size + test_size].decode()


def judge(request: dict, setup: str, test: str, call_fd: int, reply_fd: int) -> dict:
    """Wait for the program's top level to finish, then run setup and test; say how it went."""
    import random

    sources = {"<setup>": setup, "<test>": test}
    try:
        ready = read_limited_message(reply_fd, MAX_VALUE_BYTES)
    except (ValueError, OSError) as exc:
        return {"ok": False, "reason": f"malformed message from the program: {exc}"[:1000]}
    if ready is None:
        return {"ok": False, "ended": True, "reason": "the program ended before the tests ran"}
    if not ready.get("ready"):
        return {"ok": False, "reason": str(ready.get("reason", ""))[:1000]}
    functions, values = ready.get("functions") or [], ready.get("values") or {}
    unsendable = ready.get("unsendable") or {}
    random.seed(request.get("seed", 0))
    try:
        test_ns = {"__name__": "__main__"}
        if setup:
            exec(compile(setup, "<setup>", "exec"), test_ns)
        for name in request["expose"]:
            if name in unsendable:
                raise TypeError(f"the program's {name!r} is {unsendable[name]}")
            if name in values:
                test_ns[name] = decode_value(values[name])
            elif name in functions:
                test_ns[name] = RemoteFunction(name, call_fd, reply_fd)
            else:
                raise NameError(f"the program does not define {name!r}")
        exec(compile(test, "<test>", "exec"), test_ns)
    except ProgramEnded as exc:
        return {"ok": False, "ended": True, "reason": str(exc)}
    except BaseException as exc:  # noqa: BLE001
        try:
            reason = f"test: {_describe_exception(exc, sources)}"
        except BaseException:  # noqa: BLE001
            reason = "test: an exception that could not be described"
        return {"ok": False, "reason": reason}
    return {"ok": True, "reason": ""}


def contain(
    request: dict, config: dict, directory: str, fds: dict, mount_proc: bool, dumpable: bool = True
) -> None:
    """Limits, namespaces, descriptors, environment and uid of a process running in the sandbox.

    ``fds`` maps target descriptor numbers (3, 4, …) to open descriptors, plus ``"out"``
    (becomes stdout and stderr) and ``"error"`` (kept until the end of this function, to
    report a failure here, then closed). Every other descriptor is closed.
    """
    if request.get("cgroup_fd") is not None:  # first, so every process it forks is counted
        os.write(request["cgroup_fd"], b"0")
    os.setsid()
    if mount_proc and config["pid_namespace"] and config["mount_namespace"]:
        # A /proc of this namespace only: no other process, no other environment.
        with contextlib.suppress(OSError):
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # Move the pipes out of the way first, so that placing them on 0-N clobbers nothing.
    moved = {k: fcntl.fcntl(fd, fcntl.F_DUPFD, 100) for k, fd in fds.items()}
    devnull = fcntl.fcntl(os.open(os.devnull, os.O_RDONLY), fcntl.F_DUPFD, 100)
    os.dup2(devnull, 0)
    os.dup2(moved["out"], 1)
    os.dup2(moved["out"], 2)
    targets = [k for k in moved if isinstance(k, int)]
    for target in targets:
        os.dup2(moved[target], target)
    error_fd = max([2, *targets]) + 1
    if "error" in moved:
        os.dup2(moved["error"], error_fd)
        fds["error"] = error_fd
    os.closerange(error_fd + ("error" in moved), 1 << 16)  # the worker's pipes and all else
    _set_limits(request["limits"], per_uid=config["uid"] is not None)
    os.chdir(directory)
    os.environ.clear()
    os.environ.update(
        {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": directory, "TMPDIR": directory}
        | {"LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    )
    uid = config["uid"]
    if uid is not None:
        if directory != "/":
            os.chown(directory, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    elif config["user_namespace"]:
        _drop_capabilities()
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    # Only now: changing uid clears the parent-death signal. If the supervisor dies (the
    # harness went away), the process dies, and with it its PID namespace.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if not dumpable:  # after the uid change, which resets it: no ptrace, no /proc/PID/mem
        prctl(PR_SET_DUMPABLE, 0)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGXCPU, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    sys.stdout = open(1, "w", closefd=False, errors="replace")  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, errors="replace")  # noqa: SIM115
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.argv = ["program"]
    if directory != "/":
        sys.path[:0] = [directory]
    if "error" in moved:
        os.close(error_fd)


# ── the supervisor process ────────────────────────────────────────────────────────────


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _drain(fd: int, keep: bytes, limit: int, tail: bool) -> bytes:
    """Read what is left in a pipe nobody writes to any more (never blocks)."""
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 65536):
            keep = (keep + chunk)[-limit:] if tail else (keep + chunk)[:limit]
    except BlockingIOError:
        pass
    os.close(fd)
    return keep


def supervise(request: dict, config: dict, hidden: bytearray) -> dict:
    """Run one execution in fresh namespaces under a wall-clock deadline; return its result.

    Two processes: the *program* (untrusted code; PID 1 of the namespace) and the *judge*
    (trusted test code, forked after the program so nothing of it is in the program's
    memory). The judge's report, on a pipe only it holds, is the verdict.
    """
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
    call_r, call_w = os.pipe()  # judge → program: calls
    reply_r, reply_w = os.pipe()  # program → judge: readiness, return values
    error_r, error_w = os.pipe()  # program → supervisor: the sandbox failed to contain it
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (out_r, call_w, reply_r, error_r):
                os.close(fd)
            fds = {3: call_r, 4: reply_w, "out": out_w, "error": error_w}
            run_program(request, config, program_dir, fds, hidden)
        finally:
            os._exit(70)
    os.close(error_w)
    # Made only now, after the program's fork: neither exists in the program's memory.
    token = secrets.token_hex(16)
    verdict_r, verdict_w = os.pipe()
    try:
        judge_pid = os.fork()
    except OSError:  # the program (init of the PID namespace) already ended
        judge_pid = None
    if judge_pid == 0:
        try:
            for fd in (out_r, verdict_r, call_r, reply_w, error_r):
                os.close(fd)
            fds = {3: verdict_w, 4: call_w, 5: reply_r, "out": out_w, "error": verdict_w}
            run_judge(request, config, program_dir, fds, hidden, token)
        finally:
            os._exit(70)
    hidden[:] = bytearray(len(hidden))
    for fd in (out_w, call_r, call_w, reply_r, reply_w, verdict_w):
        os.close(fd)
    selector = selectors.DefaultSelector()
    selector.register(out_r, selectors.EVENT_READ, "out")
    selector.register(verdict_r, selectors.EVENT_READ, "verdict")
    running = {pid}
    pidfd = os.pidfd_open(pid)
    selector.register(pidfd, selectors.EVENT_READ, pid)
    judge_pidfd = None
    if judge_pid is not None:
        judge_pidfd = os.pidfd_open(judge_pid)
        selector.register(judge_pidfd, selectors.EVENT_READ, judge_pid)
        running.add(judge_pid)
    tail, out_bytes, report = b"", 0, b""
    deadline = started + limits["timeout_s"]
    killed_for = ""
    judge_status = None
    while running:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            killed_for = "timeout"
            break
        for key, _ in selector.select(remaining):
            if isinstance(key.data, int):
                running.discard(key.data)
                selector.unregister(key.fd)
                if key.data == judge_pid:  # reaped at once: until then the program (init
                    judge_status = os.waitpid(judge_pid, 0)[1]  # of the namespace) cannot end
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
    for target in (pid, judge_pid):
        if target is None:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(target, signal.SIGKILL)
    # The judge first: the program, as init of the PID namespace, cannot finish exiting
    # while another process of the namespace (the judge) is still unreaped.
    if judge_pid is not None and judge_pid in running:
        judge_status = os.waitpid(judge_pid, 0)[1]
    _, status, usage = os.wait4(pid, 0)
    if not config["pid_namespace"]:  # the group again: members may have forked meanwhile
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
    # Drain what was written before the end (never blocks: nothing holds the pipes now,
    # or, without a PID namespace, stop after a short grace period).
    tail = _drain(out_r, tail, OUTPUT_TAIL_BYTES, tail=True)
    report = _drain(verdict_r, report, 4096, tail=False)
    contain_error = _drain(error_r, b"", 4096, tail=False)
    for fd in (pidfd, judge_pidfd):
        if fd is not None:
            os.close(fd)
    if not config["mount_namespace"]:
        import shutil

        shutil.rmtree(program_dir, ignore_errors=True)
    out_of_memory = False
    if request.get("cgroup"):  # removed by the worker, whose view of /sys is writable
        os.close(request["cgroup_fd"])
        out_of_memory = memory_cgroup_killed(request["cgroup"])
    cpu_s = usage.ru_utime + usage.ru_stime
    if contain_error:
        result = {
            "status": "error",
            "reason": "sandbox could not contain the program: "
            + contain_error.decode("utf-8", "replace")[:1000],
        }
    else:
        result = classify(
            status, report, token, killed_for, cpu_s, limits, out_of_memory, judge_status
        )
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
    judge_status: int | None = 0,
) -> dict:
    """Turn how the program and the judge ended into passed / failed / timeout with a reason.

    ``report`` is what the judge wrote on its own pipe (the program never holds it);
    ``status`` is the program's wait status, ``judge_status`` the judge's (None: it never
    started). Passing needs the judge's report that the tests returned *and* both
    processes ending with exit code 0.
    """
    memory_note = (
        f"memory limit of {limits['memory_bytes'] >> 20} MB for the whole execution exceeded"
    )
    if killed_for == "timeout":
        reason = f"wall-clock limit of {limits['timeout_s']:g}s exceeded; killed the process group"
        if out_of_memory:  # the kernel killed some of its processes; the rest ran on
            reason += f" (and the {memory_note})"
        return {"status": "timeout", "reason": reason}
    if killed_for == "output":
        return {
            "status": "failed",
            "reason": f"wrote more than {limits['output_bytes']} bytes of output",
        }
    exited_cleanly = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    judge_cleanly = (
        judge_status is not None
        and os.WIFEXITED(judge_status)
        and os.WEXITSTATUS(judge_status) == 0
    )
    text = report.decode("utf-8", "replace")
    outcome = None
    if text.startswith(token):
        try:
            outcome = json.loads(text[len(token) :])
        except ValueError:
            outcome = {"ok": False, "reason": "malformed completion report"}
    # The judge saw the program end mid-way: how it ended (below) is the better reason.
    if outcome is not None and not outcome.get("ended"):
        if "error" in outcome:
            return {
                "status": "error",
                "reason": f"sandbox could not contain the judge: {outcome['error']}",
            }
        if not outcome.get("ok"):
            return {"status": "failed", "reason": str(outcome.get("reason", ""))[:1000]}
        if exited_cleanly and judge_cleanly:
            return {"status": "passed", "reason": ""}
        return {
            "status": "failed",
            "reason": f"tests ran but the program then ended with {_ending(status)}",
        }
    if out_of_memory:
        return {
            "status": "failed",
            "reason": f"{memory_note} ({_ending(status)})",
        }
    for ended in (status, judge_status):
        if ended is None or not os.WIFSIGNALED(ended):
            continue
        signum = os.WTERMSIG(ended)
        if signum == signal.SIGXCPU or (
            signum == signal.SIGKILL and ended is status and cpu_s >= limits["cpu_s"]
        ):
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
    # Neither this worker nor its supervisors can be traced or read through /proc by a
    # program running as the same user (user-namespace mode).
    prctl(PR_SET_DUMPABLE, 0)
    write_message(out, {"ready": True, "isolation": achieved, "pid": os.getpid()})
    while (request := read_message(inp)) is not None:
        # The trusted setup and test follow as raw bytes, read straight into a buffer that
        # is zeroed once the supervisor is forked: no copy of them stays in this process,
        # so no later program (forked from here) finds them in its memory.
        (size,) = struct.unpack(">I", read_exact(inp, 4))
        hidden = bytearray(size)
        view, got = memoryview(hidden), 0
        while got < size:
            n = os.readv(inp, [view[got:]])
            if n == 0:
                return
            got += n
        view.release()
        reply_r, reply_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(reply_r)
            try:
                result = supervise(request, config, hidden)
            except BaseException as exc:  # noqa: BLE001 — reported, never raised past the fork
                result = {"status": "error", "reason": f"sandbox supervisor failed: {exc!r}"}
            try:
                os.write(reply_w, json.dumps(result).encode())
            finally:
                os._exit(0)
        os.close(reply_w)
        hidden[:] = bytearray(size)
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
