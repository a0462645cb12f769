"""``fixable analyze RUN [RUN ...]``: the recoverability analysis of one or more runs.

A thin shell over ``fixable.analysis.pipeline.analyze``: reads the runs through the store,
writes ``analysis.json``, ``failures.parquet``/``.csv``, one CSV per table and
``tables.md`` into the (first) run directory or ``--out``, and prints the headline figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from fixable.errors import ConfigError, DataError

STAGES = ("features", "labels", "regimes", "routing", "topography", "transfer")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option(
    "--out",
    "-o",
    default=None,
    type=click.Path(file_okay=False),
    help="Directory for analysis.json and tables (default: the first run's directory).",
)
@click.option(
    "--model-info",
    default=None,
    type=click.Path(dir_okay=False, exists=True),
    help="JSON file: model → {family, method, seed}, for models without a zoo card.",
)
@click.option(
    "--budget",
    type=float,
    default=None,
    help="Headline budget in retry-equivalent samples per failure (default R // 2).",
)
@click.option(
    "--thresholds",
    default=None,
    help="Label thresholds, e.g. 'resample=0.05,steer_hard=0.5,steer_weak=0.05,interval=beta,level=0.9'.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of every resampling and fit."
)
@click.option(
    "--n-boot", type=int, default=1000, show_default=True, help="Bootstrap resamples per interval."
)
@click.option(
    "--n-seeds",
    type=int,
    default=10,
    show_default=True,
    help="Repetitions of the v1 problem-grouped topography CV (unused by protocol v2).",
)
@click.option(
    "--require-full-entropy",
    is_flag=True,
    help="Treat top-k entropy estimates as unavailable instead of flagged.",
)
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    help="Analyse only these models (names or patterns such as '*-s1'; repeat for more).",
)
@click.option(
    "--calibration",
    "calibration",
    multiple=True,
    help="Models (names or patterns) whose failures calibrate the router and are not "
    "evaluated (default: cross-calibration: seeds, else halves of the models within each family, both ways).",
)
@click.option(
    "--n-null",
    type=int,
    default=20,
    show_default=True,
    help="Permutations of every null (topography labels, regime features); at least 20.",
)
@click.option(
    "--learned-router",
    is_flag=True,
    help="Also evaluate a k-NN router fitted leave-one-model-out on the other models' "
    "labelling parts: does the signature carry routing information the rule misses?",
)
@click.option(
    "--matched-methods",
    multiple=True,
    help="Topography's accuracy-matched view: post-training methods (comma-separated, e.g. "
    "'distill,rft') chosen beforehand from the models' accuracies (the zoo's rule: "
    "fixable.organism.zoo.accuracy_matched_methods); topography is rerun on their failures. "
    "Repeat for more sets.",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
def command(
    runs,
    out,
    model_info,
    budget,
    thresholds,
    seed,
    n_boot,
    n_seeds,
    require_full_entropy,
    models,
    calibration,
    n_null,
    learned_router,
    matched_methods,
    quiet,
):
    """Analyse RUN(s): features, labels, regimes, routing, topography, transfer."""
    from fixable.analysis.labels import LabelThresholds
    from fixable.analysis.pipeline import (
        AnalysisConfig,
        _summary_lines,
        analyze,
        load_runs,
        write_analysis,
    )

    info = None
    if model_info:
        try:
            info = json.loads(Path(model_info).read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{model_info}: line {e.lineno}: not JSON ({e.msg})") from None
        if not isinstance(info, dict) or not all(isinstance(v, dict) for v in info.values()):
            raise DataError(f"{model_info}: expected an object model → {{family, method, seed}}")
    config = AnalysisConfig(
        thresholds=LabelThresholds.parse(thresholds) if thresholds else LabelThresholds(),
        budget=budget,
        n_boot=n_boot,
        n_seeds=n_seeds,
        require_full_entropy=require_full_entropy,
        calibration=tuple(calibration),
        n_null=n_null,
        random_state=seed,
        learned_router=learned_router,
        matched_methods=tuple(matched_methods),
    )
    table, sources = load_runs(runs, models=models or None)
    if table.num_rows == 0:
        raise ConfigError(
            f"{', '.join(runs)}: no rollouts; sample first with `fixable sample ... --out RUN`"
        )
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=len(STAGES), desc="analyze", unit="stage", dynamic_ncols=True)

    def progress(stage: str) -> None:
        if bar is not None:
            bar.set_postfix_str(stage)
            bar.update(STAGES.index(stage) - bar.n)

    result = analyze(table, model_info=info, config=config, sources=sources, progress=progress)
    if bar is not None:
        bar.update(len(STAGES) - bar.n)
        bar.close()
    target = Path(out) if out else Path(runs[0])
    written = write_analysis(result, target)
    if not quiet:
        click.echo(_summary_lines(result.result))
        click.echo(f"wrote {written[0]} and {len(written) - 1} tables in {target}")
