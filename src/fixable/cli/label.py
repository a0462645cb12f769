"""``fixable label RUN --model M``: sequential labelling — sample a model's uncertain
failures further (phase ``label``) until their labels are certain or a cap is reached.

A thin shell over ``fixable.analysis.sequential.sequential_labels``. The task, its
problems and the rescue grid come from the run's demo configuration when it has one
(``fixable demo`` runs), else from the options.
"""

from __future__ import annotations

import json

import click

from fixable.errors import ConfigError


@click.command()
@click.argument("run", type=click.Path(file_okay=False, exists=True))
@click.option("--model", "-m", "models", multiple=True, required=True, help="Model(s) to label.")
@click.option(
    "--round-size", type=int, default=16, show_default=True, help="Samples per setting per round."
)
@click.option(
    "--cap",
    type=int,
    default=128,
    show_default=True,
    help="Most labelling samples per failure and setting.",
)
@click.option("--max-rounds", type=int, default=8, show_default=True)
@click.option("--task", "-t", default=None, help="Task (default: the run's demo configuration).")
@click.option(
    "--problems", "n_problems", type=int, default=None, help="Problems of the task the run drew."
)
@click.option(
    "--interventions", default=None, help="Rescue grid, e.g. 'retry;temperature:0.3,1.3;mix:0.5'."
)
@click.option("--backend", "-b", default=None, help="Backend (default: the run's, else organism).")
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
def command(
    run, models, round_size, cap, max_rounds, task, n_problems, interventions, backend, as_json
):
    """Certify the labels of MODEL's failures in RUN by sampling them further."""
    from fixable.analysis.sequential import sequential_labels
    from fixable.demo import CheckpointAlias, _build_task, _zoo_checkpoints, load_config
    from fixable.interventions import parse_grid
    from fixable.registry import backends
    from fixable.tasks import get_task

    try:
        config = load_config(run)
    except ConfigError:
        config = None
    if config is not None:
        the_task = _build_task(config) if task is None else get_task(task)
        n = n_problems or config.max_problems or config.problems
        problems = the_task.problems(n, seed=config.problem_seed, split=config.split)
        settings = list(config.interventions) if interventions is None else None
        backend = backend or config.backend
        options = dict(config.backend_options)
        run_seed, max_tokens = config.seed, config.max_tokens
    else:
        if not (task and n_problems and interventions):
            raise ConfigError(
                f"{run} records no demo configuration: give --task, --problems and --interventions"
            )
        the_task = get_task(task)
        problems = the_task.problems(n_problems)
        settings, options, run_seed, max_tokens = None, {}, 0, 160
        backend = backend or "organism"
    if settings is None:
        settings = [i.label for i in parse_grid(interventions)]
    reports = []
    for model in models:
        engine = CheckpointAlias(backends.create(backend, model, **options), _zoo_checkpoints)
        report = sequential_labels(
            engine,
            the_task,
            problems,
            run,
            settings=settings,
            round_size=round_size,
            cap=cap,
            max_rounds=max_rounds,
            run_seed=run_seed,
            max_tokens=max_tokens,
            progress=None if as_json else lambda e, m=model: click.echo(f"{m}: {json.dumps(e)}"),
        )
        reports.append(report.to_dict())
        if not as_json:
            click.echo(
                f"{model}: certain labels {report.certain_before} -> {report.certain_after} of "
                f"{report.n_failures}; {report.samples_spent} samples, "
                f"{report.cost_tokens:g} cost tokens ({report.stopped})"
            )
    if as_json:
        click.echo(json.dumps(reports, indent=2))
