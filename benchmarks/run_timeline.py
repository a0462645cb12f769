"""How long a (possibly interrupted and resumed) run took to sample, from the run itself.

A study run in several pieces has no single timer. This reads the run directory: the
start of each `fixable demo` invocation (``manifest["demo_history"]``, else each sampling
invocation), and the modification time and row count of every rollout shard. Each piece
runs from its start to the last shard written before the next piece started; it prints
per piece the wall time, rollouts written and rollouts/s, the totals, and the stage times
the last demo invocation recorded (``manifest["demo"]["seconds"]``: its analysis and
report).

    python benchmarks/run_timeline.py RUN

docs/results/full/README.md quotes this for the full study.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq


def _time(stamp: str) -> float:
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    args = ap.parse_args(argv)
    run = Path(args.run)
    manifest = json.loads((run / "manifest.json").read_text())
    history = manifest.get("demo_history") or manifest.get("invocations") or []
    starts = sorted({_time(h["started"]) for h in history})
    if not starts:
        raise SystemExit(f"{run}: the manifest records no invocation")
    shards = [
        (p.stat().st_mtime, pq.ParquetFile(p).metadata.num_rows)
        for p in (run / "rollouts").glob("*.parquet")
    ]
    bounds = [*starts[1:], float("inf")]
    total_s = total_rows = pieces = 0
    for i, (start, end) in enumerate(zip(starts, bounds, strict=True), 1):
        piece = [(t, n) for t, n in shards if start <= t < end]
        if not piece:
            print(f"piece {i}: started {dt.datetime.fromtimestamp(start):%H:%M:%S}, wrote nothing")
            continue
        wall = max(t for t, _ in piece) - start
        rows = sum(n for _, n in piece)
        total_s, total_rows, pieces = total_s + wall, total_rows + rows, pieces + 1
        print(
            f"piece {i}: started {dt.datetime.fromtimestamp(start):%Y-%m-%d %H:%M:%S}, "
            f"{wall / 60:.1f} min, {rows:,} rollouts, {rows / max(wall, 1e-9):,.0f} rollouts/s"
        )
    print(
        f"sampling: {total_s / 60:.1f} min in {pieces} piece(s), {total_rows:,} rollouts, "
        f"{total_rows / max(total_s, 1e-9):,.0f} rollouts/s"
    )
    seconds = (manifest.get("demo") or {}).get("seconds") or {}
    if seconds:
        print(
            "last invocation's stages: "
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in seconds.items())
        )


if __name__ == "__main__":
    main()
