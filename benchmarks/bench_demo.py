"""How long ``fixable demo --quick`` and ``fixable demo`` take, against their targets, against
the previous revision's pipeline and against the engine's own speed, all in the same run.

1. ``fixable demo --quick`` end to end in a fresh run directory (target: at most 1 min on
   a quiet 2-core machine), then the default ``fixable demo`` (target: at most 5 min).
   Each is run as the README runs it: a separate ``fixable`` process, so start-up and
   imports count; its wall time and CPU time (all its processes) are printed.
2. The same demo by the pipeline of another revision (``--baseline-rev``, default the
   revision before the bf16 path and the worker processes), run right after it on the
   same machine: ``git archive REV src`` is unpacked into a temporary directory and
   ``python -m fixable.cli.main`` runs with that ``src`` first on ``PYTHONPATH`` (the zoo
   ships inside the package, so it samples the same models). The ratios old/new of wall
   and CPU time are the speed-up; on a shared machine the CPU-time ratio is the steadier
   one. ``--baseline-rev none`` skips it.
3. A baseline measured in the same run: the organism backend sampling probe rollouts of
   one demo model with no store, verification, reference scoring, analysis or report.
   The demo's rollouts per second divided by it is the whole pipeline's efficiency
   (1.0 = the demo costs nothing beyond decoding).
4. Resume: the quick demo run again on its finished directory (nothing to sample; the
   analysis is recomputed and the report rewritten) — what an interrupted-and-restarted
   demo pays on top of its remaining sampling.

Stage times come from the run's manifest (``demo.seconds``). Run on a quiet machine:

    nice -n 10 python benchmarks/bench_demo.py            # quick, resume and the default demo
    nice -n 10 python benchmarks/bench_demo.py --quick    # the quick demo and resume only
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS_S = {"quick": 60.0, "demo": 300.0}
BASELINE_REV = "89fee1f"  # the pipeline before the bf16 path and the worker processes


def run_demo(out: Path, quick: bool, source: Path | None = None) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``fixable demo`` process and its workers (its output goes
    to our stderr); ``source`` is another revision's ``src`` directory to run instead."""
    argv = [sys.executable, "-m", "fixable.cli.main", "demo", "--out", str(out), "-q"]
    argv += ["--quick"] if quick else []
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(source), env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=sys.stderr, env=env)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def checkout(rev: str, into: Path) -> Path:
    """``src`` of revision ``rev`` of this repository, unpacked under ``into``."""
    repo = Path(__file__).resolve().parents[1]
    archive = subprocess.run(
        ["git", "-C", str(repo), "archive", rev, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_stats(out: Path) -> dict:
    from fixable.store import Run

    run = Run(out)
    counts = run.query(
        "SELECT count(*) AS rollouts, sum(n_tokens) AS tokens, sum(cost_tokens) AS cost "
        "FROM rollouts"
    ).to_pylist()[0]
    counts = {k: int(v or 0) for k, v in counts.items()}  # duckdb sums are Decimals
    return {**counts, "seconds": run.manifest.get("demo", {}).get("seconds", {})}


def engine_baseline(config, seconds: float = 20.0) -> float:
    """Rollouts per second of the bare organism backend on one demo model's probe."""
    from fixable.backends.base import GenerationRequest
    from fixable.demo import demo_models
    from fixable.interventions import RETRY
    from fixable.registry import backends
    from fixable.tasks import get_task

    model = demo_models(config)[0]
    backend = backends.create(config.backend, model, **config.backend_options)
    task = get_task(config.task, **config.task_options)
    problems = task.problems(config.problems, seed=config.problem_seed, split=config.split)
    requests = [
        GenerationRequest(p.prompt, seed=1000 * i + j, max_tokens=config.max_tokens, stop=task.stop)
        for i, p in enumerate(problems)
        for j in range(config.k)
    ]
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:  # whole batches until the time is up
        for i in range(0, len(requests), config.batch_size):
            backend.generate(requests[i : i + config.batch_size], RETRY)
            done += len(requests[i : i + config.batch_size])
            if time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def report(name: str, wall: float, stats: dict, baseline: float, cpu: float) -> dict:
    rate = stats["rollouts"] / max(stats["seconds"].get("sampling", wall), 1e-9)
    row = {
        "demo": name,
        "wall_s": round(wall, 1),
        "target_s": TARGETS_S[name],
        "wall_over_target": round(wall / TARGETS_S[name], 3),
        "cpu_s": round(cpu, 1),
        "rollouts": stats["rollouts"],
        "tokens": stats["tokens"],
        "stage_s": {k: round(v, 1) for k, v in stats["seconds"].items()},
        "rollouts_per_s_sampling": round(rate, 2),
        "engine_rollouts_per_s": round(baseline, 2),
        "pipeline_over_engine": round(rate / baseline, 3),
    }
    verdict = "meets" if wall <= TARGETS_S[name] else "MISSES"
    print(
        f"{name:5s}: {wall / 60:5.1f} min ({verdict} the {TARGETS_S[name] / 60:.0f} min target, "
        f"ratio {row['wall_over_target']:.2f}), {cpu / 60:.1f} CPU min; "
        f"{stats['rollouts']:,} rollouts; sampling "
        f"{rate:.1f} rollouts/s = {row['pipeline_over_engine']:.2f}x the bare engine "
        f"({baseline:.1f}/s); stages {row['stage_s']}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the quick demo and resume")
    parser.add_argument("--keep", type=Path, default=None, help="write the runs here and keep them")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument(
        "--baseline-rev",
        default=BASELINE_REV,
        help=f"revision whose pipeline runs first for the ratios (default {BASELINE_REV}; none: skip)",
    )
    args = parser.parse_args()
    from fixable.demo import DEMO, QUICK

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench_demo-"))
    root.mkdir(parents=True, exist_ok=True)
    print(f"runs under {root}; cores: {os.cpu_count()}")
    rows = []
    old_src = None
    if args.baseline_rev != "none":
        old_src = checkout(args.baseline_rev, Path(tempfile.mkdtemp(prefix="bench_demo-old-")))
        print(f"baseline: the pipeline of {args.baseline_rev} from {old_src}")

    def against_old(name: str, quick: bool, wall: float, cpu: float) -> None:
        if old_src is None:
            return
        old_wall, old_cpu = run_demo(root / f"{name}-old", quick=quick, source=old_src)
        print(
            f"{name:5s}: {args.baseline_rev} took {old_wall / 60:.1f} min ({old_cpu / 60:.1f} CPU "
            f"min): this revision is {old_wall / wall:.2f}x faster by wall time, "
            f"{old_cpu / cpu:.2f}x by CPU time"
        )
        rows.append(
            {
                "demo": f"{name}-baseline",
                "rev": args.baseline_rev,
                "wall_s": round(old_wall, 1),
                "cpu_s": round(old_cpu, 1),
                "old_over_new_wall": round(old_wall / wall, 3),
                "old_over_new_cpu": round(old_cpu / cpu, 3),
            }
        )

    baseline = engine_baseline(QUICK)
    wall, cpu = run_demo(root / "quick", quick=True)
    rows.append(report("quick", wall, run_stats(root / "quick"), baseline, cpu))
    against_old("quick", True, wall, cpu)
    resume, _ = run_demo(root / "quick", quick=True)
    print(
        f"resume: re-running the finished quick demo takes {resume:.1f} s "
        f"({resume / wall:.2f}x its first run)"
    )
    rows.append(
        {"demo": "quick-resume", "wall_s": round(resume, 1), "over_first": round(resume / wall, 3)}
    )
    if not args.quick:
        baseline = engine_baseline(DEMO)
        wall, cpu = run_demo(root / "demo", quick=False)
        rows.append(report("demo", wall, run_stats(root / "demo"), baseline, cpu))
        against_old("demo", False, wall, cpu)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
