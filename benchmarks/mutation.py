"""Mutation testing of the core with mutmut 3: how many small bugs do the tests catch?

For each module below, mutmut plants every small change it knows (an operator flipped, a
constant moved by one, a string altered, an argument dropped ...) in the module's scoped
functions, one at a time, runs only that module's fast test files against it and counts
the mutant *killed* when a test fails (or times out). The script prints, per module, the
mutation score and every surviving mutant as a diff, so each survivor can be either killed
by a new test or argued equivalent in ``benchmarks/mutation_equivalent.md`` (those are
matched by module, function and mutated line, and left out of the score).

    score = killed / (killed + survived + no tests),   equivalent mutants excluded

Needs the ``mutation`` extra (``pip install -e '.[mutation]'``). Run from the repository
root, one module at a time (CPU is scarce; each run copies src/ and tests/ to a work
directory and runs mutmut there, never in the worktree)::

    nice -n 10 python benchmarks/mutation.py features           # one module
    nice -n 10 python benchmarks/mutation.py --list             # the modules and their tests
    nice -n 10 python benchmarks/mutation.py all --children 2   # every module (~1 h on 2 cores)
    nice -n 10 python benchmarks/mutation.py features --rerun    # survivors only, after new tests

Not a CI step: a module takes minutes to tens of minutes on two cores. It is a manual
benchmark; ``benchmarks/planted_bugs.py`` is the quick check of the audit's bugs.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.md"


@dataclass(frozen=True)
class Module:
    path: str  # under src/
    functions: tuple[str, ...]  # mutant-name globs (after the module's dotted name)
    tests: tuple[str, ...]  # test files under tests/
    note: str = ""


MODULES: dict[str, Module] = {
    "features": Module(
        "fixable/features.py",
        ("*",),
        ("test_features.py", "test_boundaries_features.py"),
    ),
    "labels": Module(
        "fixable/analysis/labels.py",
        ("*",),
        ("test_analysis_labels.py", "test_boundaries_labels.py"),
    ),
    "routing": Module(
        "fixable/analysis/routing.py",
        ("xǁOutcomesǁ*",),
        ("test_boundaries_routing.py", "test_boundaries_labels.py"),
        "Outcomes only (draws, the capped mask, success); the routing evaluation is being "
        "rewritten (protocol v2) and is left to it",
    ),
    "decode": Module(
        "fixable/distribution.py",
        ("x_sampling_logprobs*", "x__outside_nucleus*"),
        ("test_decode_formulas.py", "test_distribution.py"),
        "the sampling formulas (each test run decodes: the batching code is left to "
        "test_decode.py, too slow to run once per mutant here)",
    ),
    "sandbox": Module(
        "fixable/sandbox/worker.py",
        ("x_classify*", "x__ending*"),
        ("test_sandbox_verdict.py",),
        "the verdict (classify); the containment code runs in forked workers",
    ),
    "resume": Module(
        "fixable/sampling.py",
        ("x_plan*", "x_in_part*", "x__batches*", "xǁPlannedǁ*"),
        ("test_boundaries_resume.py",),
        "what a resumed run still has to sample (plan, keys, parts, batches)",
    ),
    "store-keys": Module(
        "fixable/store.py",
        ("xǁRunǁkeys*",),
        ("test_boundaries_resume.py",),
        "the keys a resumed run skips",
    ),
    "verifiers": Module(
        "fixable/tasks/gsm8k.py",
        (
            "x_canonical_number*",
            "x_extract_number*",
            "x_numbers_equal*",
            "x_gold_of*",
            "xǁGSM8KTaskǁcheck*",
            "xǁGSM8KTaskǁextract*",
        ),  # fmt: skip
        ("test_boundaries_gsm8k.py", "test_tasks_gsm8k.py"),
        "GSM8K answer extraction and checking",
    ),
}


def load_equivalents() -> list[dict]:
    """Rows of the table in mutation_equivalent.md: module, function, mutated line, why."""
    rows = []
    if not EQUIVALENT_FILE.exists():
        return rows
    for line in EQUIVALENT_FILE.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[2].startswith("`"):
            continue
        rows.append(
            {"module": cells[0], "function": cells[1], "line": cells[2].strip("`"), "why": cells[3]}
        )
    return rows


def _pyproject_with_mutmut(module: Module) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    tests = ", ".join(f'"tests/{t}"' for t in module.tests)
    return (
        text
        + "\n[tool.mutmut]\n"
        + 'source_paths = ["src"]\n'
        + f'only_mutate = ["src/{module.path}"]\n'
        + f"pytest_add_cli_args_test_selection = [{tests}]\n"
        + 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]\n'
    )


def _mutmut(args: list[str], cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args],
        cwd=cwd,
        env=env,
        text=True,
        capture_output=True,
        **kwargs,
    )


def _changed_lines(diff: str) -> tuple[str, str]:
    """(first removed line, first added line) of a mutant's diff, stripped."""
    removed = [
        ln[1:].strip()
        for ln in diff.splitlines()
        if ln.startswith("-") and not ln.startswith("---")
    ]
    added = [
        ln[1:].strip()
        for ln in diff.splitlines()
        if ln.startswith("+") and not ln.startswith("+++")
    ]
    return (removed[0] if removed else ""), (added[0] if added else "")


def _function_of(mutant: str, dotted: str) -> str:
    name = mutant[len(dotted) + 1 :]
    name = re.sub(r"__mutmut_\d+$", "", name)
    return name.removeprefix("x_").replace("xǁ", "").replace("ǁ", ".")


def _statuses(work: Path, globs: list[str]) -> dict[str, str]:
    statuses = {}
    for line in _mutmut(["results", "--all", "true"], work).stdout.splitlines():
        mutant, _, status = line.strip().partition(": ")
        if any(fnmatch.fnmatchcase(mutant, g) for g in globs):
            statuses[mutant] = status
    return statuses


def run_module(name: str, module: Module, workdir: Path, children: int, rerun: bool) -> dict:
    """Mutate and test one module; with ``rerun``, test again only the mutants that
    survived the last run in ``workdir`` (same sources, the current tests)."""
    work = workdir / name
    dotted = module.path.removesuffix(".py").replace("/", ".")
    globs = [f"{dotted}.{g}" for g in module.functions]
    if rerun:
        if not (work / "mutants").is_dir():
            raise SystemExit(f"no earlier run of {name} in {work}: run it without --rerun first")
        source = (ROOT / "src" / module.path).read_bytes()
        if (work / "src" / module.path).read_bytes() != source:
            raise SystemExit(f"src/{module.path} changed since the last run: run it afresh")
        shutil.rmtree(work / "tests")
        shutil.copytree(
            ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__")
        )
        targets = [m for m, s in _statuses(work, globs).items() if s in ("survived", "no tests")]
    else:
        if work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True)
        shutil.copytree(ROOT / "src", work / "src", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(
            ROOT / "tests", work / "tests", ignore=shutil.ignore_patterns("__pycache__")
        )
        (work / "pyproject.toml").write_text(_pyproject_with_mutmut(module))
        # tests find the benchmark data at ../shared/data beside their checkout (conftest)
        shared = ROOT.parent / "shared"
        for beside in (workdir / "shared", work / "shared"):
            if shared.is_dir() and not beside.exists():
                beside.symlink_to(shared)
        targets = globs
    started = time.monotonic()
    proc = _mutmut(["run", "--max-children", str(children), *targets], work) if targets else None
    seconds = time.monotonic() - started
    if proc is not None and proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"mutmut run failed for {name} (exit {proc.returncode})")
    statuses = _statuses(work, globs)
    equivalents = [e for e in load_equivalents() if e["module"] == name]
    survivors, equivalent = [], []
    for mutant, status in sorted(statuses.items()):
        if status not in ("survived", "no tests"):
            continue
        diff = _mutmut(["show", mutant], work).stdout
        function = _function_of(mutant, dotted)
        removed, added = _changed_lines(diff)
        match = next(
            (
                e
                for e in equivalents
                if e["function"] == function
                # a row "- <line>" names a deletion by the line it deletes
                and (e["line"] == added or (not added and e["line"] == f"- {removed}"))
            ),
            None,
        )
        (equivalent if match else survivors).append((mutant, status, function, diff))
    counts = {
        s: sum(v == s for v in statuses.values())
        for s in ("killed", "timeout", "survived", "no tests", "segfault", "suspicious")
    }
    killed = counts["killed"] + counts["timeout"] + counts["segfault"]
    denominator = killed + len(survivors)
    return {
        "module": name,
        "mutants": len(statuses),
        "killed": killed,
        "equivalent": len(equivalent),
        "survived": len(survivors),
        "score": killed / denominator if denominator else float("nan"),
        "seconds": seconds,
        "survivors": survivors,
        "counts": counts,
    }


def report(result: dict) -> None:
    print(
        f"\n== {result['module']}: {result['killed']}/{result['killed'] + result['survived']} "
        f"non-equivalent mutants killed = {result['score']:.1%}  "
        f"({result['mutants']} mutants, {result['equivalent']} equivalent excluded, "
        f"{result['seconds']:.0f} s; {result['counts']})"
    )
    for mutant, status, function, diff in result["survivors"]:
        removed, added = _changed_lines(diff)
        print(f"  {status}: {mutant}  [{function}]\n    - {removed}\n    + {added}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"one or more of {', '.join(MODULES)}, or all")
    parser.add_argument("--list", action="store_true", help="list the modules and exit")
    parser.add_argument("--children", type=int, default=1, help="mutants tested at once")
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="test only the last run's survivors again, against the current tests",
    )
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "fixable-mutation"
    )
    args = parser.parse_args()
    if args.list or not args.modules:
        for name, m in MODULES.items():
            print(f"{name:10s} src/{m.path} [{', '.join(m.functions)}] <- {', '.join(m.tests)}")
            if m.note:
                print(f"{'':10s} {m.note}")
        return 0
    names = list(MODULES) if args.modules == ["all"] else args.modules
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        print(f"unknown module(s) {', '.join(unknown)}; known: {', '.join(MODULES)}")
        return 2
    results = []
    for name in names:
        result = run_module(name, MODULES[name], args.workdir, args.children, args.rerun)
        report(result)
        results.append(result)
    print("\nmodule       score    killed/non-equivalent  equivalent  mutants  seconds")
    for r in results:
        print(
            f"{r['module']:12s} {r['score']:6.1%}   {r['killed']:5d}/{r['killed'] + r['survived']:<5d}"
            f"          {r['equivalent']:5d}    {r['mutants']:5d}  {r['seconds']:7.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
