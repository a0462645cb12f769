"""The sandbox's verdict: a program passes only when its tests ran *and* it then exited
cleanly. "Tests ran, then a non-zero exit (or a signal)" is a failure.

``classify`` is checked on hand-made wait statuses (every branch, with the kind of outcome
asserted, not its timing), and the whole sandbox on programs that let the trusted tests
pass and then end the process badly.
"""

from __future__ import annotations

import json
import os
import signal

import pytest

from fixable.sandbox import Limits, Program, Sandbox
from fixable.sandbox.worker import classify

TOKEN = "tok-123"
LIMITS = {"timeout_s": 2.0, "cpu_s": 2, "output_bytes": 1 << 16, "memory_bytes": 256 << 20,
          "file_size_bytes": 1 << 20}  # fmt: skip


def exited(code: int) -> int:
    """A wait status for a normal exit with ``code`` (as os.waitpid reports it)."""
    return (code & 0xFF) << 8


def killed(signum: int) -> int:
    return signum & 0x7F


def report(**outcome) -> bytes:
    return (TOKEN + json.dumps(outcome)).encode()


def test_status_helpers_match_the_os_macros():
    assert os.WIFEXITED(exited(3)) and os.WEXITSTATUS(exited(3)) == 3
    assert os.WIFSIGNALED(killed(9)) and os.WTERMSIG(killed(9)) == 9


def verdict(status, text=b"", killed_for="", cpu_s=0.0, out_of_memory=False):
    return classify(status, text, TOKEN, killed_for, cpu_s, LIMITS, out_of_memory)


def test_tests_passed_and_clean_exit_passes():
    assert verdict(exited(0), report(ok=True, reason="")) == {"status": "passed", "reason": ""}


@pytest.mark.parametrize(
    "status, ending",
    [(exited(1), "exited with code 1"), (exited(3), "exited with code 3"),
     (killed(signal.SIGKILL), "killed by SIGKILL"), (killed(signal.SIGSEGV), "killed by SIGSEGV")],
)  # fmt: skip
def test_tests_passed_then_an_unclean_ending_fails(status, ending):
    result = verdict(status, report(ok=True, reason=""))
    assert result["status"] == "failed"
    assert "tests ran" in result["reason"] and ending in result["reason"]


def test_failed_tests_fail_whatever_the_exit():
    for status in (exited(0), exited(1)):
        result = verdict(status, report(ok=False, reason="test: AssertionError"))
        assert result == {"status": "failed", "reason": "test: AssertionError"}


def test_a_report_without_the_token_is_not_a_pass():
    forged = json.dumps({"ok": True}).encode()
    assert verdict(exited(0), forged)["status"] == "failed"
    assert verdict(exited(0), b"")["status"] == "failed"
    malformed = verdict(exited(0), TOKEN.encode() + b"{not json")
    assert malformed == {"status": "failed", "reason": "malformed completion report"}


def test_report_reasons_are_kept_cut_at_1000_characters_and_default_to_empty():
    assert verdict(exited(0), report(ok=False)) == {"status": "failed", "reason": ""}
    long = verdict(exited(0), report(ok=False, reason="x" * 2000))
    assert long["reason"] == "x" * 1000


def test_undecodable_bytes_in_a_report_are_replaced_not_raised():
    text = TOKEN.encode() + b'{"ok": false, "reason": "bad \xff byte"}'
    result = verdict(exited(0), text)
    assert result == {"status": "failed", "reason": "bad \ufffd byte"}


def test_out_of_memory_is_only_claimed_when_the_cgroup_says_so():
    plain = classify(killed(signal.SIGKILL), b"", TOKEN, "", 0.0, LIMITS)  # no OOM argument
    assert plain["status"] == "failed" and "memory" not in plain["reason"]
    assert plain["reason"] == "killed by SIGKILL before the tests finished"


def test_containment_errors_are_errors_not_failures():
    result = verdict(exited(0), report(error="unshare refused"))
    assert result["status"] == "error" and "unshare refused" in result["reason"]


def test_limits_give_the_kind_of_outcome_they_name():
    wall = verdict(killed(9), killed_for="timeout")
    assert wall == {
        "status": "timeout",
        "reason": "wall-clock limit of 2s exceeded; killed the process group",
    }
    output = verdict(exited(0), report(ok=True), killed_for="output")
    assert output == {"status": "failed", "reason": "wrote more than 65536 bytes of output"}
    assert verdict(killed(signal.SIGXCPU)) == {
        "status": "timeout",
        "reason": "CPU-time limit of 2s exceeded",
    }
    # SIGKILL at the CPU limit (the hard limit past the soft one) is a timeout too
    assert verdict(killed(signal.SIGKILL), cpu_s=LIMITS["cpu_s"])["status"] == "timeout"
    assert verdict(killed(signal.SIGKILL), cpu_s=LIMITS["cpu_s"] - 0.5)["status"] == "failed"
    fsz = verdict(killed(signal.SIGXFSZ))
    assert fsz["status"] == "failed" and "file-size" in fsz["reason"]
    oom = verdict(killed(signal.SIGKILL), out_of_memory=True)
    assert oom["status"] == "failed" and "256 MB" in oom["reason"]


def test_an_ending_before_any_report_fails_and_says_how():
    result = verdict(exited(0))
    assert result["status"] == "failed" and "before the tests finished" in result["reason"]


# ── the whole sandbox: tests pass, then the process ends badly ────────────────────────


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=1, limits=Limits(timeout_s=20.0)) as box:
        yield box


@pytest.mark.parametrize(
    "ending",
    [
        "import os\n_exit = os._exit\nos._exit = lambda code: _exit(3)\n",
        "import os, signal\nos._exit = lambda code: os.kill(os.getpid(), signal.SIGKILL)\n",
    ],
    ids=["exit-3", "sigkill"],
)
def test_program_whose_tests_pass_but_then_exits_badly_fails(sandbox, ending):
    program = Program(ending + "def f(x):\n    return x + 1\n", "assert f(1) == 2\n", expose=("f",))
    result = sandbox.run(program)
    assert result.status == "failed", result
    assert "tests ran" in result.reason, result
    # the same program without the bad ending passes: the tests themselves are right
    clean = Program("def f(x):\n    return x + 1\n", "assert f(1) == 2\n", expose=("f",))
    assert sandbox.run(clean).status == "passed"
