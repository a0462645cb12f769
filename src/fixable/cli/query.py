"""``fixable query``: SQL over a run with DuckDB, printed as a table or written to a file.

The run's views are ``rollouts`` and ``problems`` (columns in ``fixable.schema``)::

    fixable query runs/rl "SELECT setting, avg(correct::INT) FROM rollouts GROUP BY setting"
"""

from __future__ import annotations

import math

import click
import pyarrow as pa

CELL_WIDTH = 40  # longer cells (texts, token lists) are cut with an ellipsis


def _cell(value, width: int = CELL_WIDTH) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    if isinstance(value, list | tuple):
        inner = ", ".join(_cell(v) for v in value[:8])
        text = f"[{inner}{', …' if len(value) > 8 else ''}]"
    else:
        text = str(value)
    text = text.replace("\n", "⏎")
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(table: pa.Table, *, uncut: tuple[str, ...] = ()) -> str:
    """A plain-text table of ``table``: a header, a rule, one line per row; cells of
    columns other than ``uncut`` are cut at CELL_WIDTH characters."""
    names = table.column_names
    widths_allowed = [10**9 if n in uncut else CELL_WIDTH for n in names]
    rows = [
        [_cell(v, w) for v, w in zip(row.values(), widths_allowed, strict=True)]
        for row in table.to_pylist()
    ]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    numeric = [
        pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
        for t in table.schema.types
    ]

    def line(cells):
        return "  ".join(
            c.rjust(w) if num else c.ljust(w)
            for c, w, num in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def report_quarantined(run) -> None:
    for q in run.quarantined:
        click.echo(f"warning: {q}", err=True)


@click.command("query")
@click.argument("run_dir", metavar="RUN")
@click.argument("sql")
@click.option("--csv", "csv_path", default=None, metavar="F", help="Write the whole result as CSV.")
@click.option(
    "--parquet",
    "parquet_path",
    default=None,
    metavar="F",
    help="Write the whole result as Parquet.",
)
@click.option(
    "--max-rows",
    type=int,
    default=50,
    show_default=True,
    help="Rows printed (files get every row).",
)
def command(run_dir, sql, csv_path, parquet_path, max_rows):
    """Run SQL over a run's views `rollouts` and `problems` (DuckDB dialect)."""
    from fixable.store import Run

    run = Run(run_dir)
    written = False
    for path, fmt in ((csv_path, "csv"), (parquet_path, "parquet")):
        if path:
            run.copy(sql, path, fmt)
            click.echo(f"wrote {path}", err=True)
            written = True
    if not written:
        table = run.query(sql, limit=max_rows + 1)
        shown = table.slice(0, max_rows)
        if table.num_columns:
            click.echo(format_table(shown))
        if table.num_rows > max_rows:
            click.echo(
                f"(first {max_rows} rows shown; --max-rows N for more, --csv F or "
                f"--parquet F for all)"
            )
        else:
            click.echo(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    # only here: a StoreError raised above already names the shards it quarantined
    report_quarantined(run)
