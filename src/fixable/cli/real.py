"""``fixable real select`` and ``fixable real study``: the real-model study, the slice
chosen from the bases' pass@1 before any rescue (``fixable.realstudy``)."""

from __future__ import annotations

import shlex

import click


@click.group("real")
def command() -> None:
    """The real-model study: choose the slice (select), then study the variants (study)."""


def _bar_progress(quiet: bool):
    if quiet:
        return None, lambda: None
    from tqdm import tqdm

    bars: dict[str, tqdm] = {}

    def progress(label: str, p) -> None:
        bar = bars.get(label)
        if bar is None:
            for old in bars.values():
                old.close()
            bars.clear()
            bar = bars[label] = tqdm(total=p.total, desc=label, unit="rollout", dynamic_ncols=True)
        bar.update(p.done - bar.n)

    def close() -> None:
        for bar in bars.values():
            bar.close()

    return progress, close


@command.command("select")
@click.option("--config", "-c", "config_file", required=True, metavar="SELECT.toml",
              help="The candidate slices and bases (e.g. studies/real-select.toml).")  # fmt: skip
@click.option("--out", "-o", required=True, help="Where the runs and selection.json go.")
@click.option("--data", default=None, help="Data root holding gsm8k/ and math500/ "
              "(default: the first shared/data above the package or the current directory).")  # fmt: skip
@click.option("--device", default=None, help="Overrides backend_options.device (auto, cpu, cuda).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def select_command(config_file, out, data, device, quiet) -> None:
    """Measure the bases' pass@1 on each candidate slice's half 0 and choose the slice by
    the fixed rule (resumable); writes OUT/selection.json."""
    from fixable.realstudy import format_selection, load_select_config, select_slice

    config = load_select_config(config_file)
    progress, close = _bar_progress(quiet)
    try:
        selection = select_slice(config, out, data=data, device=device, progress=progress)
    finally:
        close()
    click.echo(format_selection(selection))
    click.echo(f"written: {out}/selection.json")


@command.command("study")
@click.option("--config", "-c", "config_file", required=True, metavar="STUDY.toml",
              help="The study file (e.g. studies/real.toml); its task comes from the selection.")  # fmt: skip
@click.option("--selection", "-s", required=True,
              help="selection.json written by `fixable real select`, or its directory.")  # fmt: skip
@click.option("--out", "-o", required=True, help="The study's run directory.")
@click.option("--device", default=None, help="Overrides backend_options.device (auto, cpu, cuda).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def study_command(config_file, selection, out, device, quiet) -> None:
    """Probe, rescue sweep, analysis and report of the built real variants on the chosen
    slice (resumable)."""
    from fixable.cli.demo import _Bars
    from fixable.demo import format_headline
    from fixable.realstudy import run_real_study

    words = ["fixable", "real", "study", "--config", config_file, "--selection", selection]
    words += ["--out", out] + (["--device", device] if device else [])
    bars = _Bars(enabled=not quiet)
    try:
        result = run_real_study(
            config_file,
            selection,
            out,
            device=device,
            command=" ".join(shlex.quote(w) for w in words),
            progress=bars,
        )
    finally:
        bars.close()
    click.echo(
        f"\n{len(result.models)} models, {sum(result.problems.values())} problems probed, "
        f"{sum(result.failures.values())} failures analysed in "
        f"{result.seconds['total'] / 60:.1f} min\n"
    )
    click.echo(format_headline(result.summary))
    click.echo(f"\nreport: {result.report}")
