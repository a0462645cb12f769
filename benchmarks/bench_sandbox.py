"""Executions per second of the sandbox versus one fresh ``python`` process per execution.

Workload: HumanEval's 164 canonical solutions with their tests (all must pass in every
arm). Arms, all with the same number of parallel workers:

- ``sandbox``: :class:`fixable.sandbox.Sandbox` (forked from pre-started workers, full
  isolation: network/PID/mount namespaces, uid drop, limits, completion token);
- ``fresh python``: ``python -c <program>`` per execution with a timeout, no isolation
  at all (the baseline the issue asks for);
- ``fresh python, isolated``: the same under ``unshare --net --pid --fork`` (only where
  ``unshare`` works), to show what per-execution isolation costs without the fork model.

Prints each arm's executions per second (median over repeats) and the ratio against the
fresh-python baseline measured in the same run. Worker start-up is reported separately.

    python benchmarks/bench_sandbox.py [--data ../shared/data/humaneval] [--workers 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fixable.sandbox import Limits, Program, Sandbox
from fixable.tasks import get_task

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "humaneval"


def whole_program(problem) -> str:
    meta = problem.meta
    return f"{meta['code_prompt']}{problem.answer}\n{meta['test']}\ncheck({meta['entry_point']})\n"


def run_fresh(
    programs: list[str], workers: int, prefix: list[str], timeout_s: float
) -> tuple[float, int]:
    def one(source: str) -> bool:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", source],
            capture_output=True,
            timeout=timeout_s,
            env={"PATH": "/usr/bin:/bin"},
        )
        return done.returncode == 0

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        passed = sum(pool.map(one, programs))
    return time.perf_counter() - start, passed


def unshare_prefix() -> list[str] | None:
    tool = shutil.which("unshare")
    if tool is None:
        return None
    prefix = [tool, "--net", "--pid", "--fork", "--kill-child"]
    try:
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    return prefix if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="HumanEval file or directory"
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel executions in every arm")
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed passes per arm (median reported)"
    )
    args = parser.parse_args()

    task = get_task("humaneval", path=args.data, template="completion")
    problems = task.problems()
    limits = Limits(timeout_s=20.0)
    sandboxed = [task.program(p.answer, p) for p in problems]
    sources = [whole_program(p) for p in problems]
    n = len(problems)

    start = time.perf_counter()
    sandbox = Sandbox(workers=args.workers, limits=limits)
    sandbox.run_many([Program("pass\n")] * args.workers)  # starts every worker
    startup_s = time.perf_counter() - start
    print(
        f"machine: {sys.platform}, python {sys.version.split()[0]}, workers {args.workers}, {n} programs"
    )
    print(f"sandbox {sandbox.isolation.describe()}; worker start-up {startup_s:.2f}s (once)")

    arms: dict[str, list[float]] = {"sandbox": [], "fresh python": []}
    prefix = unshare_prefix()
    if prefix:
        arms["fresh python, isolated"] = []
    for repeat in range(args.repeats):
        t0 = time.perf_counter()
        results = sandbox.run_many(sandboxed)
        arms["sandbox"].append(time.perf_counter() - t0)
        passed = sum(r.passed for r in results)
        assert passed == n, f"sandbox: {passed}/{n} canonical solutions passed"
        elapsed, passed = run_fresh(sources, args.workers, [], limits.timeout_s)
        assert passed == n, f"fresh python: {passed}/{n} passed"
        arms["fresh python"].append(elapsed)
        if prefix:
            elapsed, passed = run_fresh(sources, args.workers, prefix, limits.timeout_s)
            assert passed == n, f"fresh isolated python: {passed}/{n} passed"
            arms["fresh python, isolated"].append(elapsed)
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in arms.items()))
    sandbox.close()

    baseline = n / statistics.median(arms["fresh python"])
    print(f"\n{'arm':<26}{'exec/s':>10}{'vs fresh python':>18}")
    for arm, times in arms.items():
        rate = n / statistics.median(times)
        print(f"{arm:<26}{rate:>10.1f}{rate / baseline:>17.2f}x")


if __name__ == "__main__":
    main()
