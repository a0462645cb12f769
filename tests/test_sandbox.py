"""The sandbox: honest programs score right, hostile ones are contained and score as failures."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fixable.errors import CapabilityError, ConfigError
from fixable.sandbox import Limits, Program, Sandbox

FAST = Limits(timeout_s=2.0)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2, limits=FAST) as box:
        yield box


def processes_named(name: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/comm").read_text().strip() == name:
                    found.append(int(entry))
            except OSError:
                pass
    return found


def living(pid: int) -> bool:
    """Running or sleeping: neither gone nor a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def name_self(name: str) -> str:
    """Program text that renames its process (visible in /proc/*/comm on the host)."""
    return (
        f"import ctypes\nctypes.CDLL(None).prctl(15, ctypes.c_char_p({name.encode()!r}), 0, 0, 0)\n"
    )


# ── honest programs ──────────────────────────────────────────────────────────────────


def test_pass_fail_and_reasons(sandbox):
    good = sandbox.run(
        Program("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", expose=("f",))
    )
    assert good.passed and good.status == "passed" and good.reason == ""
    wrong = sandbox.run(Program("def f(x):\n    return x\n", "assert f(1) == 2\n", expose=("f",)))
    assert (
        wrong.status == "failed"
        and "AssertionError" in wrong.reason
        and "assert f(1) == 2" in wrong.reason
    )
    broken = sandbox.run(Program("def f(x) return\n", "assert f(1) == 2\n", expose=("f",)))
    assert broken.status == "failed" and "SyntaxError" in broken.reason
    missing = sandbox.run(Program("g = 1\n", "assert f(1) == 2\n", expose=("f",)))
    assert missing.status == "failed" and "does not define 'f'" in missing.reason
    printed = sandbox.run(Program("print('hello from the program')\n"))
    assert printed.passed and "hello from the program" in printed.output


def test_run_many_keeps_order(sandbox):
    programs = [Program(f"x = {i}\n", "", setup=f"assert {i} % 3 != 0\n") for i in range(12)]
    calls = []
    results = sandbox.run_many(programs, progress=lambda done, total: calls.append((done, total)))
    assert [r.passed for r in results] == [i % 3 != 0 for i in range(12)], results
    assert calls[-1] == (12, 12)


def test_random_is_seeded_per_execution(sandbox):
    program = Program("import random\nprint(random.random())\n")
    first, second = sandbox.run(program), sandbox.run(program)
    assert first.passed and first.output == second.output


def test_limits_validate_with_named_field():
    with pytest.raises(ConfigError, match="timeout_s must be in"):
        Limits(timeout_s=0)
    with pytest.raises(ConfigError, match=r"memory_mb must be an integer in \[64"):
        Limits(memory_mb=1)
    with pytest.raises(ConfigError, match="isolation must be"):
        Sandbox(isolation="maybe")  # type: ignore[arg-type]


def test_isolation_is_reported(sandbox):
    iso = sandbox.isolation
    assert "isolation:" in iso.describe()
    if os.geteuid() == 0:  # our machines: everything is available to root
        assert iso.network and iso.pid_namespace and iso.mount_namespace and iso.uid_drop
        assert iso.read_only_host
        assert iso.memory_cgroup == Path("/sys/fs/cgroup/memory").is_dir()
        assert iso.missing == []


def test_required_isolation_raises_when_missing(monkeypatch):
    box = Sandbox(workers=1, isolation="off")
    try:
        assert box.isolation.missing  # "off" asks for no namespaces at all
    finally:
        box.close()
    with pytest.raises(ConfigError, match="closed"):
        box.run(Program("x = 1\n"))
    # as root every protection is available, so make one missing to reach the refusal
    import fixable.sandbox as sandbox_module

    monkeypatch.setattr(sandbox_module.Isolation, "missing", property(lambda self: ["network"]))
    with pytest.raises(CapabilityError, match="isolation='required'"):
        Sandbox(workers=1, isolation="required").isolation  # noqa: B018


# ── hostile programs ─────────────────────────────────────────────────────────────────


def test_infinite_loop_times_out(sandbox):
    result = sandbox.run(Program("while True:\n    pass\n", "assert True\n"))
    assert result.status == "timeout" and "wall-clock limit of 2s" in result.reason


def test_cpu_limit_is_a_timeout(sandbox):
    # 1 CPU-second takes many wall seconds on a loaded machine: the wall limit stays far away
    result = sandbox.run(Program("while True:\n    pass\n"), Limits(timeout_s=120, cpu_s=1))
    assert result.status == "timeout" and "CPU-time limit of 1s" in result.reason


def test_sleeping_and_ignoring_signals_times_out(sandbox):
    code = "import signal, time\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):\n    signal.signal(s, signal.SIG_IGN)\ntime.sleep(60)\n"
    assert sandbox.run(Program(code)).status == "timeout"


def test_fork_bomb_is_contained_and_cleaned_up(sandbox):
    name = "fxb" + secrets.token_hex(4)
    code = name_self(name) + (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    )
    result = sandbox.run(Program(code, "assert True\n"))
    assert result.status in ("timeout", "failed") and not result.passed
    time.sleep(0.2)
    assert processes_named(name) == []


def test_daemonized_child_dies_with_the_execution(sandbox):
    name = "fxd" + secrets.token_hex(4)
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        + "".join("        " + line + "\n" for line in name_self(name).splitlines())
        + "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
    )
    result = sandbox.run(Program(code))
    assert result.passed  # the program itself did nothing wrong
    time.sleep(0.2)
    assert processes_named(name) == []


def test_memory_bomb_fails_without_hurting_the_host(sandbox):
    # A generous deadline: filling even 256 MB takes seconds on a loaded machine.
    limits = Limits(timeout_s=30, memory_mb=256)
    code = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 << 20))\n"
    result = sandbox.run(Program(code, "assert True\n"), limits)
    assert result.status == "failed" and "MemoryError" in result.reason
    one_shot = sandbox.run(Program("x = bytearray(64 << 30)\n"), limits)
    assert one_shot.status == "failed" and "MemoryError" in one_shot.reason


def test_forked_memory_bomb_is_capped_as_a_whole(sandbox):
    """Eight processes, each under its own address-space limit, together exceed the cap."""
    if not sandbox.isolation.memory_cgroup:
        pytest.skip("no writable cgroup-v1 memory controller: memory is capped per process only")
    code = (
        "import os\n"
        "for _ in range(8):\n"
        "    if os.fork() == 0:\n"
        "        break\n"
        "blocks = []\n"
        "while True:\n"
        "    try:\n"
        "        blocks.append(bytearray(16 << 20))\n"
        "    except MemoryError:\n"
        "        pass\n"
    )
    result = sandbox.run(Program(code, "assert True\n"), Limits(timeout_s=30, memory_mb=256))
    # Which process the kernel's OOM killer picks, and whether the rest then spin until the
    # deadline, depends on timing (a loaded machine): failed or timeout. That the whole
    # execution hit the cgroup's cap is reported either way.
    assert result.status in ("failed", "timeout"), result
    assert "256 MB for the whole execution" in result.reason, result
    assert sandbox.run(Program("x = 1\n", "assert True\n")).passed


def test_huge_file_write_fails(sandbox):
    code = "with open('big', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))\n"
    result = sandbox.run(Program(code, "assert True\n"))
    assert result.status == "failed" and (
        "file-size limit" in result.reason or "File too large" in result.reason
    )


def test_writing_outside_its_directory_does_not_reach_the_host(sandbox, tmp_path):
    targets = [tmp_path / "escaped.txt", Path.home() / f"fixable-escape-{secrets.token_hex(4)}"]
    lines = "".join(
        f"try:\n    open({str(t)!r}, 'w').write('x')\n    wrote += 1\nexcept OSError:\n    pass\n"
        for t in targets
    )
    code = "wrote = 0\n" + lines + "open('/tmp/inside-private-tmp', 'w').write('x')\n"
    try:
        result = sandbox.run(Program(code, "assert wrote == 0\n", expose=("wrote",)))
        assert result.passed, result  # no write got out; its own (private) /tmp is writable
        assert not any(t.exists() for t in targets)
        assert not Path("/tmp/inside-private-tmp").exists()
    finally:
        for t in targets:
            t.unlink(missing_ok=True)


def test_network_connections_fail(sandbox):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.1)
    port = server.getsockname()[1]
    accepted, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept())
                return
            except OSError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    code = (
        "import socket\n"
        f"socket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'leak')\n"
    )
    result = sandbox.run(Program(code, "assert True\n"))
    outward = sandbox.run(
        Program("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=1)\n")
    )
    stop.set()
    thread.join()
    server.close()
    assert not result.passed and not outward.passed
    if sandbox.isolation.network:
        assert accepted == []
        assert "Network is unreachable" in outward.reason or "OSError" in outward.reason


def test_parent_environment_secrets_are_not_visible(monkeypatch):
    secret = "fixable-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("FIXABLE_TEST_SECRET", secret)
    code = (
        "import os, glob\n"
        f"needle = {secret[:15]!r} + {secret[15:]!r}\n"
        "found = needle in repr(dict(os.environ))\n"
        "for path in ['/proc/self/environ', '/proc/1/environ'] + glob.glob('/proc/*/environ'):\n"
        "    try:\n"
        "        data = open(path, 'rb').read().decode('latin-1')\n"
        "    except OSError:\n"
        "        continue\n"
        "    if needle in data:\n"
        "        found = True\n"
        "        print(data)\n"
    )
    with Sandbox(workers=1, limits=FAST) as box:
        result = box.run(Program(code, "assert found\n", expose=("found",)))
    assert result.status == "failed"
    assert secret not in result.output


def test_killing_its_parent_does_not_stop_the_harness(sandbox):
    iso = sandbox.isolation
    if not (iso.pid_namespace or iso.uid_drop):
        pytest.skip("without a PID namespace or another uid the program could kill pytest itself")
    me = os.getpid()
    code = (
        "import os, signal\n"
        "for target in (os.getppid(), " + str(me) + "):\n"
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    result = sandbox.run(Program(code, "assert False, 'the tests run'\n"))
    assert not result.passed
    assert sandbox.run(Program("x = 1\n", "assert True\n")).passed


def test_killing_every_process_it_can_see_is_contained(sandbox):
    iso = sandbox.isolation
    if not (iso.pid_namespace and iso.uid_drop):
        pytest.skip("kill(-1) is only safe to try inside a PID namespace as another uid")
    code = "import os, signal\nos.kill(-1, signal.SIGKILL)\n"
    result = sandbox.run(Program(code, "assert False\n"))
    assert not result.passed
    assert sandbox.run(Program("x = 1\n", "assert True\n")).passed


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "raise SystemExit\n",
        "import atexit, os\natexit.register(lambda: os._exit(0))\n",
        "import sys, os\nsys.excepthook = lambda *a: os._exit(0)\n",
        "import os, threading\nthreading.Timer(0.0, lambda: os._exit(0)).start()\nimport time; time.sleep(0.2)\n",
    ],
    ids=["sys.exit", "os._exit", "SystemExit", "atexit", "excepthook", "thread-exit"],
)
def test_exiting_before_the_asserts_is_a_failure(sandbox, code):
    result = sandbox.run(Program(code, "assert False, 'the tests ran and failed'\n"))
    assert result.status == "failed", result


@pytest.mark.parametrize(
    "code, test",
    [
        ("import builtins\nbuiltins.abs = lambda x: 0\n", "assert abs(-5) == 0\n"),
        ("import builtins\nbuiltins.all = lambda *a: True\n", "assert all([False])\n"),
        (
            "import builtins\nclass Fake(Exception): pass\nbuiltins.AssertionError = Fake\n",
            "assert 1 == 2\n",
        ),
        (
            "import sys\ndef skip(frame, event, arg):\n    if event == 'line' and frame.f_code.co_filename == '<test>':\n        frame.f_lineno = frame.f_lineno + 1\n    return skip\nsys.settrace(skip)\n",
            "assert False\nx = 1\n",
        ),
        ("import os\nos.write(3, b'{\"ok\": true}')\nos._exit(0)\n", "assert False\n"),
    ],
    ids=["patch-abs", "patch-all", "patch-AssertionError", "settrace-skip", "forge-report"],
)
def test_monkeypatching_the_test_helpers_does_not_pass(sandbox, code, test):
    assert sandbox.run(Program(code, test)).status == "failed"


def test_redefining_a_trusted_helper_does_not_pass(sandbox):
    setup = "def helper(x):\n    return x * 2\n"
    code = setup + "def helper(x):\n    return 0\ndef f(x):\n    return 1\n"
    test = "assert helper(f(3)) == 0\n"  # true only with the candidate's fake helper
    assert sandbox.run(Program(code, test, setup=setup, expose=("f",))).status == "failed"


def test_output_flood_is_cut_off(sandbox):
    result = sandbox.run(
        Program("while True:\n    print('x' * 10000)\n"), Limits(timeout_s=5, output_kb=64)
    )
    assert result.status == "failed" and "bytes of output" in result.reason
    assert len(result.output) <= 4096


def test_stack_overflow_crash_is_a_failure(sandbox):
    # str() of a deeply nested list recurses in C: with the limit lifted, the C stack overflows.
    code = "import sys\nsys.setrecursionlimit(10**7)\nx = []\nfor _ in range(10**6):\n    x = [x]\nstr(x)\n"
    result = sandbox.run(Program(code, "assert True\n"), Limits(timeout_s=20))
    assert result.status == "failed" and "SIGSEGV" in result.reason
    assert sandbox.run(Program("x = 1\n")).passed


def test_a_killed_worker_is_replaced(sandbox):
    worker = sandbox._acquire()
    sandbox._release(worker)
    worker.kill()
    results = sandbox.run_many([Program("x = 1\n")] * 4)
    assert all(r.passed for r in results)
    assert len(sandbox._all) <= sandbox.workers


def test_everything_dies_with_the_harness(tmp_path):
    """A harness killed mid-execution takes its workers and their programs along."""
    name = "fxh" + secrets.token_hex(4)
    program = name_self(name) + "import time\ntime.sleep(120)\n"
    script = tmp_path / "harness.py"
    script.write_text(
        "from fixable.sandbox import Limits, Program, Sandbox\n"
        "box = Sandbox(workers=2, limits=Limits(timeout_s=120))\n"
        f"box.run_many([Program({program!r})] * 2)\n"
    )
    harness = subprocess.Popen([sys.executable, str(script)])
    try:
        for _ in range(600):  # until both programs run (start-up on a loaded machine)
            if len(processes_named(name)) == 2:
                break
            time.sleep(0.1)
        assert len(processes_named(name)) == 2
    finally:
        harness.kill()
        harness.wait()
    for _ in range(300):
        alive = [pid for pid in processes_named(name) if living(pid)]
        if not alive:
            break
        time.sleep(0.1)
    assert alive == []


# ── a verdict the program cannot forge ──────────────────────────────────────────────
# Each program defines ``f`` returning a wrong answer (None) and then tries to make the
# harness report a pass anyway. The judge runs the test in another process, so none of
# these reaches it.

FORGERIES = {
    "patch-exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n",
    "patch-json.dumps": 'import json\njson.dumps = lambda *a, **k: \'{"ok": true, "reason": ""}\'\n',
    "patch-compile": (
        "import builtins\n_compile = builtins.compile\n"
        "builtins.compile = lambda src, name, mode, *a, **k: _compile('pass', name, mode)\n"
    ),
    "rewrite-os.write": (
        "import os\n_write = os.write\n"
        "def write(fd, data):\n"
        "    return _write(fd, bytes(data).replace(b'\"ok\": false', b'\"ok\": true'))\n"
        "os.write = write\n"
    ),
    "always-equal": (
        "class Anything:\n    def __eq__(self, other):\n        return True\n"
        "    __ne__ = lambda self, other: False\n    __hash__ = object.__hash__\n"
        "def f(x):\n    return Anything()\n"
    ),
    "str-subclass-equal": (
        "class S(str):\n    def __eq__(self, other):\n        return True\n"
        "    __hash__ = str.__hash__\n"
        "def f(x):\n    return S('wrong')\n"
    ),
    "patch-math.isclose": "import math\nmath.isclose = lambda *a, **k: True\n",
    "token-from-memory": (
        "import gc, os, re\n"
        "for obj in gc.get_objects():\n"
        "    for value in (obj.values() if isinstance(obj, dict) else ()):\n"
        "        if isinstance(value, str) and re.fullmatch('[0-9a-f]{32}', value):\n"
        "            for fd in range(3, 64):\n"
        "                try:\n"
        '                    os.write(fd, (value + \'{"ok": true, "reason": ""}\').encode())\n'
        "                except OSError:\n"
        "                    pass\n"
    ),
    "patch-os._exit-and-exit": (
        "import os, threading\n"
        "def forge():\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, b'{\"ok\": true}')\n"
        "        except OSError:\n"
        "            pass\n"
        "    os._exit(0)\n"
        "threading.Timer(0.05, forge).start()\n"
    ),
    "kill-everyone-else": "import os, signal\nfor p in os.listdir('/proc'):\n    if p.isdigit() and int(p) != os.getpid():\n        try:\n            os.kill(int(p), signal.SIGKILL)\n        except OSError:\n            pass\n",
}
WRONG = "def f(x):\n    return None\n"


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forging_a_pass_fails(sandbox, name):
    code = FORGERIES[name]
    if "def f(" not in code:
        code = WRONG + code
    test = "import math\nassert math.isclose(f(3.5), 0.5)\nassert f(3.5) == 0.5\n"
    result = sandbox.run(Program(code, test, expose=("f",)), Limits(timeout_s=10))
    assert result.status == "failed", result
    assert sandbox.run(Program("def f(x):\n    return x % 1.0\n", test, expose=("f",))).passed


HUMANEVAL_2_FORGERIES = [  # completions of the prompt: the body returns None, then a patch
    "    return None\nimport builtins; builtins.exec = lambda *a, **k: None\n",
    '    return None\nimport json; json.dumps = lambda *a, **k: \'{"ok": true, "reason": ""}\'\n',
    "    return None\nimport builtins; _c = builtins.compile; "
    "builtins.compile = lambda s, n, m, *a, **k: _c('pass', n, m)\n",
    "    return None\nimport os; os.write = (lambda w: lambda fd, d: "
    "w(fd, bytes(d).replace(b'\"ok\": false', b'\"ok\": true')))(os.write)\n",
]


def test_the_four_forgeries_fail_on_humaneval_2(shared_data, sandbox):
    from fixable.tasks import get_task

    path = shared_data / "humaneval"
    task = get_task("humaneval", path=path, template="completion", sandbox=sandbox)
    problem = next(p for p in task.problems() if p.id == "humaneval/2")
    verdicts = task.verify_many(HUMANEVAL_2_FORGERIES, [problem] * 4)
    assert [v.status for v in verdicts] == ["failed"] * 4, [v.reason for v in verdicts]
    assert all(v.answer == body for v, body in zip(verdicts, HUMANEVAL_2_FORGERIES, strict=True))
    assert task.verify_many([problem.answer], [problem])[0].correct


def test_a_non_zero_exit_after_the_tests_is_not_a_pass(sandbox):
    code = (
        "import os\n_exit = os._exit\nos._exit = lambda code: _exit(3)\ndef f(x):\n    return x\n"
    )
    result = sandbox.run(Program(code, "assert f(1) == 1\n", expose=("f",)))
    assert result.status == "failed" and "tests ran but the program then ended" in result.reason


def test_the_tests_are_not_in_the_programs_memory(sandbox):
    """A program that reads its whole address space does not find the expected value."""
    secret = int.from_bytes(secrets.token_bytes(6), "big")
    code = (
        "import ctypes, re\n"
        "def f():\n"
        "    found = None\n"
        "    with open('/proc/self/maps') as maps:\n"
        "        for line in maps:\n"
        "            fields = line.split()\n"
        "            if not fields[1].startswith('r') or fields[-1] in ('[vvar]', '[vsyscall]', '[vvar_vclock]'):\n"
        "                continue\n"
        "            start, end = (int(x, 16) for x in fields[0].split('-'))\n"
        "            data = ctypes.string_at(start, end - start)\n"
        "            hit = re.search(rb'assert f\\(\\) == (\\d+)', data)\n"
        "            if hit:\n"
        "                found = int(hit.group(1))\n"
        "    return found\n"
    )
    result = sandbox.run(
        Program(code, f"assert f() == {secret}\n", expose=("f",)), Limits(timeout_s=30)
    )
    assert result.status == "failed" and "AssertionError" in result.reason, result


def test_the_judge_cannot_be_traced_or_read(sandbox):
    if not sandbox.isolation.pid_namespace:
        pytest.skip("without a PID namespace the program sees the host's processes")
    code = (
        "import os\nopened = 0\n"
        "for p in os.listdir('/proc'):\n"
        "    if p.isdigit() and int(p) != os.getpid():\n"
        "        for what, mode in (('mem', 'r+b'), ('environ', 'rb')):\n"
        "            try:\n"
        "                open(f'/proc/{p}/{what}', mode).close()\n"
        "                opened += 1\n"
        "            except OSError:\n"
        "                pass\n"
        "        try:\n"
        "            os.listdir(f'/proc/{p}/fd')\n"
        "            opened += 1\n"
        "        except OSError:\n"
        "            pass\n"
    )
    assert sandbox.run(Program(code, "assert opened == 0\n", expose=("opened",))).passed


def test_plain_values_cross_exactly_and_other_objects_do_not(sandbox):
    value = "[None, True, 2**80, -0.0, float('inf'), 1.5 + 2j, 'é\\ud800', b'\\x00', bytearray(b'x'), (1, (2,)), {1: [2], 'a': {3}}, frozenset({4})]"
    code = f"def f(x):\n    return x\ndef g():\n    return {value}\ndef h():\n    return iter([])\n"
    test = (
        f"v = {value}\n"
        "assert g() == v and f(v) == v\n"
        "assert [type(x) for x in g()] == [type(x) for x in v]\n"
        "assert str(g()[3]) == '-0.0'\n"
        "try:\n    h()\nexcept TypeError as e:\n    assert 'list_iterator' in str(e)\nelse:\n    raise AssertionError\n"
    )
    result = sandbox.run(Program(code, test, expose=("f", "g", "h")))
    assert result.passed, result


def test_exceptions_of_the_program_reach_the_test(sandbox):
    code = "def f(x):\n    return [1][x]\nclass Odd(Exception):\n    pass\ndef g():\n    raise Odd('strange')\n"
    test = "try:\n    f(5)\nexcept IndexError:\n    pass\nelse:\n    raise AssertionError\ng()\n"
    result = sandbox.run(Program(code, test, expose=("f", "g")))
    assert result.status == "failed" and "Odd: strange" in result.reason, result
