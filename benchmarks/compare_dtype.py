"""What the organism engine's bf16 path changes in the science: the quick demo run twice,
in float32 and in bfloat16, compared failure by failure.

For each run it prints the wall and CPU time; then, between the two runs:

1. probe rollouts: the share with identical tokens under the same key (bf16 rounds the
   linear layers' inputs and weights, so a near-tie can resolve the other way and the
   rollout continues differently from there);
2. failures: how many (model, problem) failures the two runs share and how many only
   one of them has (a problem can fail 0/K in one precision and not in the other);
3. among the shared failures, how many change their regime label and their routed
   intervention, with the label transitions;
4. every numeric feature's distribution over each run's failures (mean, std), the mean
   shift in units of the float32 standard deviation, the two-sample Kolmogorov–Smirnov
   statistic, and the median absolute paired difference on the shared failures;
5. the headline estimates of both summaries side by side.

    nice -n 10 python benchmarks/compare_dtype.py                   # runs both quick demos
    python benchmarks/compare_dtype.py --float32 RUN --bfloat16 RUN # compares two finished runs
    nice -n 10 python benchmarks/compare_dtype.py --config studies/demo.toml --root runs/dtype
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FEATURES = (
    "answer_dispersion",
    "trajectory_uncertainty",
    "reference_drift",
    "modal_answer_share",
    "fork_entropy",
    "length_normalised_nll",
    "n_distinct_answers",
    "no_answer_share",
    "mean_tokens",
)


def run_demo(out: Path, dtype: str, config: str | None, workers: int | None) -> dict:
    """One ``fixable demo`` process in ``dtype``; its wall and CPU seconds (children's)."""
    argv = ["fixable", "demo", "--out", str(out), "-q", "--dtype", dtype]
    argv += ["--config", config] if config else ["--quick"]
    if workers is not None:
        argv += ["--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=sys.stderr)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def ks_statistic(a, b) -> float:
    """Two-sample Kolmogorov–Smirnov statistic: the largest gap between the two ECDFs."""
    import numpy as np

    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    grid = np.concatenate((a, b))
    cdf_a = np.searchsorted(a, grid, side="right") / len(a)
    cdf_b = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def probe_agreement(run_a: Path, run_b: Path) -> tuple[int, int]:
    """(probe rollouts with identical tokens under the same key, keys in both runs)."""
    from fixable.store import Run

    def load(path):
        rows = (
            Run(path)
            .query(
                "SELECT model, problem_id, sample_index, token_ids FROM rollouts WHERE phase = 'probe'"
            )
            .to_pylist()
        )
        return {(r["model"], r["problem_id"], r["sample_index"]): r["token_ids"] for r in rows}

    a, b = load(run_a), load(run_b)
    shared = a.keys() & b.keys()
    return sum(a[k] == b[k] for k in shared), len(shared)


def compare(run_a: Path, run_b: Path, names=("float32", "bfloat16")) -> dict:
    import pandas as pd

    fa = pd.read_parquet(run_a / "failures.parquet").set_index(["model", "problem_id"])
    fb = pd.read_parquet(run_b / "failures.parquet").set_index(["model", "problem_id"])
    shared = fa.index.intersection(fb.index)
    out: dict = {}
    same, total = probe_agreement(run_a, run_b)
    out["probe_identical"] = [same, total]
    print(
        f"probe rollouts with identical tokens: {same} of {total} ({100 * same / max(total, 1):.1f} %)"
    )
    out["failures"] = {names[0]: len(fa), names[1]: len(fb), "shared": len(shared)}
    print(
        f"failures: {len(fa)} in {names[0]}, {len(fb)} in {names[1]}; {len(shared)} shared, "
        f"{len(fa) - len(shared)} only in {names[0]}, {len(fb) - len(shared)} only in {names[1]}"
    )
    for column, what in (("label", "labels"), ("routed_setting", "routes")):
        if column not in fa.columns or column not in fb.columns:
            print(f"{what}: column {column!r} not in both analyses")
            continue
        a, b = fa.loc[shared, column].astype(str), fb.loc[shared, column].astype(str)
        changed = a != b
        out[f"{column}_changed"] = [int(changed.sum()), len(shared)]
        print(
            f"{what} changed on shared failures: {int(changed.sum())} of {len(shared)} "
            f"({100 * changed.mean() if len(shared) else 0:.1f} %)"
        )
        if column == "label" and changed.any():
            moves = pd.crosstab(a[changed], b[changed])
            moves.index.name, moves.columns.name = names[0], names[1]
            print(moves.to_string())
    print(
        f"\n{'feature':26s} {'mean ' + names[0]:>14s} {'mean ' + names[1]:>14s} "
        f"{'std ' + names[0]:>13s} {'shift/std':>9s} {'KS':>6s} {'med |paired diff|':>18s}"
    )
    out["features"] = {}
    for feature in FEATURES:
        if feature not in fa.columns or feature not in fb.columns:
            continue
        a, b = fa[feature].astype(float).dropna(), fb[feature].astype(float).dropna()
        std = a.std()
        paired = (
            fa.loc[shared, feature].astype(float) - fb.loc[shared, feature].astype(float)
        ).abs()
        row = {
            "mean": [float(a.mean()), float(b.mean())],
            "std": [float(std), float(b.std())],
            "shift_over_std": float((b.mean() - a.mean()) / std) if std > 0 else None,
            "ks": ks_statistic(a, b),
            "median_abs_paired_diff": float(paired.median()) if len(paired) else None,
        }
        out["features"][feature] = row
        shift = "n/a" if row["shift_over_std"] is None else f"{row['shift_over_std']:+.3f}"
        print(
            f"{feature:26s} {a.mean():14.4f} {b.mean():14.4f} {std:13.4f} {shift:>9s} "
            f"{row['ks']:6.3f} {row['median_abs_paired_diff'] or 0:18.4f}"
        )
    heads = []
    for run in (run_a, run_b):
        summary = json.loads((run / "summary.json").read_text())
        heads.append({r["id"]: r.get("value") for r in summary.get("headline", [])})
    print(f"\n{'headline':48s} {names[0]:>10s} {names[1]:>10s}")
    out["headline"] = {}
    for key in heads[0]:
        a, b = heads[0].get(key), heads[1].get(key)
        out["headline"][key] = [a, b]
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"{key:48s} {fmt(a):>10s} {fmt(b):>10s}")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--float32", type=Path, default=None, help="a finished float32 run")
    parser.add_argument("--bfloat16", type=Path, default=None, help="a finished bfloat16 run")
    parser.add_argument("--config", default=None, help="demo run file (default: --quick)")
    parser.add_argument("--root", type=Path, default=None, help="write the two runs here")
    parser.add_argument("--workers", type=int, default=None, help="fixable demo --workers")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    root = args.root or Path(tempfile.mkdtemp(prefix="compare_dtype-"))
    runs, times = {}, {}
    for dtype in ("float32", "bfloat16"):
        given = getattr(args, dtype)
        if given is not None:
            runs[dtype] = given
            continue
        runs[dtype] = root / dtype
        times[dtype] = run_demo(runs[dtype], dtype, args.config, args.workers)
        print(
            f"{dtype}: {times[dtype]['wall_s']:.1f} s wall, {times[dtype]['cpu_s']:.1f} s CPU "
            f"({runs[dtype]})"
        )
    if len(times) == 2:
        print(
            f"bfloat16 vs float32, whole demo: {times['float32']['cpu_s'] / times['bfloat16']['cpu_s']:.2f}x "
            f"by CPU time, {times['float32']['wall_s'] / times['bfloat16']['wall_s']:.2f}x by wall time"
        )
    result = compare(runs["float32"], runs["bfloat16"])
    result["times"] = times
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
