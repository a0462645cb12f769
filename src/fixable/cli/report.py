"""``fixable report RUN``: the run's self-contained HTML report, its figures as PNG and PDF,
and summary.json — a thin shell over ``fixable.report.build_report``."""

from __future__ import annotations

import click


@click.command("report")
@click.argument("run", type=click.Path(file_okay=False, path_type=str))
@click.option(
    "--out",
    "-o",
    default=None,
    help="Directory to write report.html, summary.json and figures/ (default: the run).",
)
@click.option(
    "--reanalyze", is_flag=True, help="Recompute analysis.json even when it is up to date."
)
@click.option("--no-pdf", is_flag=True, help="Write the figures as PNG only.")
@click.option(
    "--control",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="A run with a known-truth analysis (e.g. the planted testbed) to show as the "
    "positive control (default: the one the demo recorded for RUN, if any).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(run, out, reanalyze, no_pdf, control, quiet):
    """Write RUN/report.html (offline, figures embedded), RUN/figures/*.png|pdf and
    RUN/summary.json. A run without an up-to-date analysis.json is analysed first.

    \b
    fixable report runs/demo
    fixable report runs/full --out docs/results
    """
    from fixable.report import build_report
    from fixable.report.figures import FIGURES

    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(FIGURES) + 2, desc="report", unit="step", dynamic_ncols=True)

    def progress(stage: str) -> None:
        if bar is not None:
            bar.set_postfix_str(stage, refresh=False)
            bar.update(1)

    try:
        files = build_report(
            run,
            out=out,
            reanalyze=reanalyze,
            formats=("png",) if no_pdf else ("png", "pdf"),
            progress=progress,
            control=control,
        )
    finally:
        if bar is not None:
            bar.close()
    if files.analysed:
        click.echo(f"analysed {run} (analysis.json written beside the run)")
    for name, why in files.unavailable.items():
        click.echo(f"figure {name} not drawn: {why}")
    click.echo(f"summary: {files.summary}")
    click.echo(f"report: {files.html}")
