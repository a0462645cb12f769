"""Wall time, throughput, budget and peak memory of a full sweep on one zoo model.

A sweep is the protocol of SPEC §3 through the public API (``fixable.protocol.sweep``,
which calls ``sample`` for each phase) into a run directory:

1. probe: N problems of the chains test split × K rollouts at the default config;
2. rescue: every failed problem (0 of K correct) × every setting of the rescue grid ×
   R rollouts. The grid is the one the zoo was built to exercise: ``retry``,
   ``temperature(T=0.3)``, ``(T=0.6)``, ``(T=1.3)``, ``mix(alpha=0.5)`` (with the zoo base
   of the model's family), ``checkpoint(c=<first checkpoint>)`` (the earliest intermediate
   checkpoint of the model's own run, e.g. ``step-50`` for ``llama-rl-s0``) and
   ``dola(layer=1)``.

It prints the wall time of each phase and of the whole sweep, rollouts/s and tokens/s, the
budget each setting used (sum of ``cost_tokens``: ``mix`` is charged two forward passes
per token), the process's peak resident memory (``ru_maxrss``) and the run directory's
size on disk. The run goes to a temporary directory that is deleted afterwards unless
``--out`` names one to keep (then ``benchmarks/rescue_table.py RUN`` tabulates it). A
``--out`` that already holds the keys is resumed, not resampled, and the timings then
cover only the missing keys (the script says so).

    nice -n 10 python benchmarks/bench_sweep.py [--model llama-rl-s0] [--problems 1000]
        [--k 8] [--r 32] [--threads 1] [--out runs/sweep-llama-rl-s0]

One torch thread is the default: on the 2-core development machine the engine decodes
faster with one thread than with two (the batches are small matrices).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rescue_grid(backend) -> list:
    """The rescue settings of the benchmark, checked against what the backend serves."""
    from fixable.interventions import Intervention, parse_grid

    grid = parse_grid("retry;temperature:0.3,0.6,1.3;mix:0.5")
    checkpoints = backend.checkpoints()
    if not checkpoints:
        raise SystemExit(f"{backend.model_name} has no intermediate checkpoint to sample")

    def step(label: str) -> float:
        found = re.search(r"(\d+)$", label)
        return float(found.group(1)) if found else float("inf")

    grid.append(Intervention("checkpoint", min(checkpoints, key=step)))
    grid.append(Intervention("dola", 1))
    return grid


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="llama-rl-s0", help="a zoo model name")
    parser.add_argument("--problems", type=int, default=1000, help="chains test problems (N)")
    parser.add_argument("--k", type=int, default=8, help="probe rollouts per problem")
    parser.add_argument("--r", type=int, default=32, help="rescue rollouts per failure and setting")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0, help="run seed")
    parser.add_argument("--out", help="run directory to keep (default: a deleted temp dir)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)

    from fixable import get_task
    from fixable.protocol import sweep
    from fixable.registry import backends

    task = get_task("chains")
    problems = task.problems(args.problems, split="test")
    backend = backends.create("organism", args.model)
    grid = rescue_grid(backend)

    temporary = args.out is None
    out = Path(tempfile.mkdtemp(prefix="bench-sweep-")) if temporary else Path(args.out)
    print(
        f"# sweep of {args.model}: {len(problems)} chains test problems × K={args.k}, then "
        f"failures × {len(grid)} settings × R={args.r}; torch threads {torch.get_num_threads()}"
    )
    print(f"# settings: {', '.join(i.label for i in grid)}")
    print(f"# run directory: {out}{' (temporary)' if temporary else ''}")

    last_report = [0.0]

    def progress(p) -> None:
        now = time.monotonic()
        if p.done == p.total or now - last_report[0] >= 30:
            last_report[0] = now
            print(
                f"  {p.phase}: {p.done}/{p.total} rollouts, {p.tokens} tokens, {p.elapsed_s:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    started = time.monotonic()
    try:
        report = sweep(
            backend,
            task,
            problems,
            out,
            k=args.k,
            r=args.r,
            interventions=grid,
            run_seed=args.seed,
            progress=progress,
        )
        wall = time.monotonic() - started
        run_bytes = directory_bytes(out)
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    phases = [("probe", report.probe)] + ([("rescue", report.rescue)] if report.rescue else [])
    skipped = sum(r.skipped for _, r in phases)
    if skipped:
        print(f"# note: {skipped} keys were already in {out} and not sampled again")
    print()
    print("| phase | rollouts | tokens | cost tokens | wall s | rollouts/s | tokens/s |")
    print("|---|---|---|---|---|---|---|")
    for name, r in phases:
        print(
            f"| {name} | {r.sampled:,} | {r.tokens:,} | {r.cost_tokens:,.0f} | {r.wall_s:.1f} | "
            f"{r.sampled / max(r.wall_s, 1e-9):,.1f} | {r.tokens / max(r.wall_s, 1e-9):,.0f} |"
        )
    sampled = sum(r.sampled for _, r in phases)
    tokens = sum(r.tokens for _, r in phases)
    cost = sum(r.cost_tokens for _, r in phases)
    print(
        f"| whole sweep | {sampled:,} | {tokens:,} | {cost:,.0f} | {wall:.1f} | "
        f"{sampled / wall:,.1f} | {tokens / wall:,.0f} |"
    )
    print()
    print(
        f"failed problems (0/{args.k} correct): {len(report.failed)} of {len(problems)} "
        f"({len(report.failed) / max(len(problems), 1):.1%})"
    )
    print()
    print("| rescue setting | problems | rollouts | tokens | cost tokens (budget) |")
    print("|---|---|---|---|---|")
    for intervention in grid:
        spent = report.budget.get(intervention.label)
        if spent is None:
            print(f"| {intervention.label} | 0 | 0 | 0 | 0 |")
            continue
        print(
            f"| {intervention.label} | {spent['problems']:,} | {spent['rollouts']:,} | "
            f"{spent['tokens']:,} | {spent['cost_tokens']:,.0f} |"
        )
    print()
    print(f"peak resident memory (ru_maxrss): {peak_rss_mb:,.0f} MiB")
    print(f"run directory size: {run_bytes / 2**20:,.2f} MiB ({run_bytes:,} bytes)")


if __name__ == "__main__":
    main()
