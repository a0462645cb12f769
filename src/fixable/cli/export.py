"""``fixable export``: a run's rollouts (or problems) as JSON lines, streamed."""

from __future__ import annotations

import json
import os
import sys

import click


@click.command("export")
@click.argument("run_dir", metavar="RUN")
@click.option(
    "--jsonl",
    "jsonl",
    is_flag=False,
    flag_value="-",
    default=None,
    metavar="[F]",
    help="Write JSON lines to F (stdout when F is omitted or '-').",
)
@click.option(
    "--table", type=click.Choice(["rollouts", "problems"]), default="rollouts", show_default=True
)
@click.option("--where", default=None, help="SQL condition on the rows, e.g. \"phase = 'probe'\".")
def command(run_dir, jsonl, table, where):
    """Export a run's rows, one JSON object per line, in key order."""
    from fixable import schema
    from fixable.cli.query import report_quarantined
    from fixable.errors import ConfigError
    from fixable.store import Run

    if jsonl is None:
        raise ConfigError("choose an output format: --jsonl [F] (the only one for now)")
    run = Run(run_dir)
    order = ", ".join(schema.KEY) if table == "rollouts" else "task, problem_id"
    sql = f"SELECT * FROM {table}" + (f" WHERE {where}" if where else "") + f" ORDER BY {order}"
    out = sys.stdout if jsonl == "-" else open(jsonl, "w", encoding="utf-8")  # noqa: SIM115
    n = 0
    try:
        for batch in run.batches(sql):
            for row in batch.to_pylist():
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
                n += 1
    except BaseException:
        if out is not sys.stdout:  # no half-written file left behind
            out.close()
            os.unlink(jsonl)
        raise
    if out is not sys.stdout:
        out.close()
    report_quarantined(run)
    if jsonl != "-":
        click.echo(f"wrote {n} {table} to {jsonl}", err=True)
