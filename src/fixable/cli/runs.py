"""``fixable runs``: list the runs under a directory with their counts per model and phase."""

from __future__ import annotations

import click


@click.command("runs")
@click.argument("directory", default="runs", required=False, metavar="[DIR]")
@click.option(
    "--verify",
    "verify_run",
    default=None,
    metavar="RUN",
    help="Read every page of every shard of RUN (checksums included), quarantine damaged "
    "shards and say what re-running the sampling command will sample again; exit 1 if "
    "anything is missing.",
)
def command(directory, verify_run):
    """List runs at or under DIR (default ./runs): rollouts per model and phase."""
    import sys
    from pathlib import Path

    import pyarrow as pa

    from fixable.cli.query import format_table, report_quarantined
    from fixable.errors import StoreError
    from fixable.store import Run, find_runs

    if verify_run is not None:
        report = Run(verify_run).verify()
        for line in report.lines():
            click.echo(line)
        sys.exit(0 if report.whole else 1)

    if not Path(directory).is_dir():
        raise StoreError(f"{directory} is not a directory; name the directory holding your runs")
    found = find_runs(directory)
    if not found:
        click.echo(
            f"no runs under {directory} (make one with `fixable sample ... --out "
            f"{Path(directory) / 'NAME'}`)"
        )
        return
    rows = []
    for path in found:
        run = Run(path)
        try:
            counts = run.counts().to_pylist()
        except StoreError as e:  # e.g. a damaged shard, now quarantined: list the others
            click.echo(f"warning: {path}: {e}", err=True)
            counts = run.counts().to_pylist()
        base = {
            "run": str(path),
            "seed": run.manifest.get("run_seed"),
            "created": str(run.manifest.get("created", ""))[:19],
        }
        if not counts:
            rows.append(
                {
                    **base,
                    "model": "",
                    "phase": "",
                    "problems": 0,
                    "rollouts": 0,
                    "settings": 0,
                    "correct": 0,
                    "errors": 0,
                }
            )
        for c in counts:
            rows.append({**base, **c})
        report_quarantined(run)
    order = [
        "run",
        "model",
        "phase",
        "problems",
        "settings",
        "rollouts",
        "correct",
        "errors",
        "seed",
        "created",
    ]
    click.echo(
        format_table(pa.Table.from_pylist([{k: r[k] for k in order} for r in rows]), uncut=("run",))
    )
