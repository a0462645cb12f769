"""``fixable demo``: the whole study on the shipped zoo — probe, rescue sweep, analysis with
transfer, report — in one resumable command, ending with the headline figures beside the
paper's. A thin shell over ``fixable.demo.run_demo``."""

from __future__ import annotations

import os

import click


class _Bars:
    """One tqdm bar per (model, phase) while sampling, one for the analysis and the report."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.key = None

    def _open(self, key, **kwargs):
        from tqdm import tqdm

        self.close()
        self.key = key
        self.bar = tqdm(dynamic_ncols=True, **kwargs)

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.stage == "sample" and event.sampling is not None:
            p = event.sampling
            key = (event.model, p.phase, p.total)
            if p.total == 0:  # everything already in the run: a line, not an empty bar
                if self.key != key:
                    self.close()
                    self.key = key
                    click.echo(
                        f"[{event.index}/{event.n_models}] {event.model} {p.phase}: all "
                        f"{p.skipped} rollouts already in the run",
                        err=True,
                    )
                return
            if self.key != key:
                self._open(
                    key,
                    total=p.total,
                    desc=f"[{event.index}/{event.n_models}] {event.model} {p.phase}",
                    unit="rollout",
                    smoothing=0.1,
                )
                if p.skipped:
                    self.bar.write(
                        f"{event.model} {p.phase}: {p.skipped} rollouts already in the run, skipped"
                    )
            self.bar.update(p.done - self.bar.n)
            if p.elapsed_s > 0:
                self.bar.set_postfix_str(f"{p.tokens / p.elapsed_s:,.0f} tok/s", refresh=False)
        elif event.stage == "sample" and event.detail:
            self.close()  # a line of its own, not inside the last bar
            click.echo(f"[{event.index}/{event.n_models}] {event.model}: {event.detail}", err=True)
        elif event.stage in ("analysis", "report"):
            if self.key != event.stage:
                self._open(
                    event.stage,
                    bar_format="{desc} [{elapsed}]",
                    desc=f"{event.stage}: {event.detail}",
                )
            self.bar.set_description_str(f"{event.stage}: {event.detail}")
        elif event.stage == "done":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.key = None


def _command(out, quick, config_file, models, problems, seed, dtype=None, no_planted=False) -> str:
    """The command that does this run again (what the manifest and the report show)."""
    import shlex

    words = ["fixable", "demo"] + (["--quick"] if quick else [])
    if config_file:
        words += ["--config", config_file]
    for model in models:
        words += ["--model", model]
    if problems is not None:
        words += ["--problems", str(problems)]
    if seed is not None:
        words += ["--seed", str(seed)]
    if dtype is not None:
        words += ["--dtype", dtype]
    if no_planted:
        words += ["--no-planted"]
    words += ["--out", str(out)]
    return " ".join(shlex.quote(w) for w in words)


class _DemoCommand(click.Command):
    """``fixable demo``, whose help ends with every field of a study file and its default
    (read from ``fixable.demo.study_defaults``, so they are stated once)."""

    def format_epilog(self, ctx, formatter) -> None:
        import json

        from fixable.demo import study_defaults

        defaults = study_defaults()
        analysis = defaults.pop("analysis")
        rows = [(name, json.dumps(value)) for name, value in defaults.items()]
        rows += [(f"analysis.{name}", json.dumps(value)) for name, value in analysis.items()]
        with formatter.section("Study file fields (--config RUN.toml) and their defaults"):
            formatter.write_dl(rows)
        super().format_epilog(ctx, formatter)


@click.command("demo", cls=_DemoCommand)
@click.option(
    "--out",
    "-o",
    default=None,
    help="Run directory (default runs/demo, or runs/quick with --quick).",
)
@click.option("--quick", is_flag=True, help="The same pipeline, smaller: a few minutes.")
@click.option(
    "--config",
    "-c",
    "config_file",
    default=None,
    metavar="RUN.toml",
    help="A demo run file (e.g. studies/full.toml), or a run directory to reproduce.",
)
@click.option("--model", "-m", "models", multiple=True, help="Study only these zoo models.")
@click.option("--problems", "-n", type=int, default=None, help="Problems probed per model.")
@click.option("--seed", type=int, default=None, help="Run seed.")
@click.option(
    "--threads",
    type=int,
    default=1,
    show_default=True,
    help="Torch threads (one is fastest for the tiny zoo models; results do not depend on it).",
)
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Sampling processes, one torch thread each (default: 2 on a machine with 2 or "
    "more cores, else 1; results do not depend on it).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "auto"]),
    default=None,
    help="Precision of the organism engine's linear layers (sets backend_options.dtype; "
    "bfloat16 changes the rollouts, docs/engine.md).",
)
@click.option(
    "--no-planted",
    is_flag=True,
    help="Leave out the positive control (the planted testbed, written beside --out as "
    "OUT-planted); a --config run file never includes it.",
)
@click.option("--no-report", is_flag=True, help="Stop after analysis.json.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def command(
    out,
    quick,
    config_file,
    models,
    problems,
    seed,
    threads,
    workers,
    dtype,
    no_planted,
    no_report,
    quiet,
):
    """Probe, rescue sweep, analysis and report on the shipped zoo, resumable.

    Interrupt it at any time: running the same command again continues where it stopped.

    \b
    fixable demo                     # runs/demo, then runs/demo/report.html
    fixable demo --quick             # the same pipeline, smaller
    fixable demo --config studies/full.toml --out runs/full   # the paper-scale study

    Without --config, the planted testbed runs first as the report's positive control
    (runs/demo-planted, runs/quick-planted; --no-planted leaves it out).
    """
    from fixable.demo import (
        DEMO,
        PLANTED,
        PLANTED_QUICK,
        QUICK,
        control_dir,
        control_lines,
        format_headline,
        load_config,
        run_demo,
    )
    from fixable.errors import ConfigError

    if quick and config_file:
        raise ConfigError("--quick and --config both choose a configuration; give one of them")
    config = load_config(config_file) if config_file else (QUICK if quick else DEMO)
    changes = {}
    if models:
        changes["models"] = tuple(models)
    if problems is not None:
        changes["problems"] = problems
    if seed is not None:
        changes["seed"] = seed
    if dtype is not None:
        changes["backend_options"] = {**config.backend_options, "dtype": dtype}
    if changes:
        config = config.replace(**changes)
    out = out or ("runs/quick" if quick else "runs/demo")
    control = None if (config_file or no_planted) else (PLANTED_QUICK if quick else PLANTED)
    bars = _Bars(enabled=not quiet)
    try:
        result = run_demo(
            config,
            out,
            report=not no_report,
            command=_command(out, quick, config_file, models, problems, seed, dtype, no_planted),
            threads=threads,
            workers=workers if workers is not None else min(2, os.cpu_count() or 1),
            progress=bars,
            control=control,
        )
    finally:
        bars.close()
    n_failures = sum(result.failures.values())
    click.echo(
        f"\n{len(result.models)} models, {sum(result.problems.values())} problems probed, "
        f"{n_failures} failures analysed in {result.seconds['total'] / 60:.1f} min\n"
    )
    click.echo(format_headline(result.summary))
    if control is not None:
        click.echo("\n" + "\n".join(control_lines(control_dir(result.run))))
    click.echo(f"\nanalysis: {result.run / 'analysis.json'}")
    if not no_report:
        click.echo(f"report:   {result.report}")
