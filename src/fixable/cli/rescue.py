"""``fixable rescue``: deployment-time rescue of one problem within a token budget.

Probes K samples; if all fail, computes the failure's features, routes it, spends the rest
of the budget on the routed intervention and prints the first verified success with the
trace of calls (``--json`` for the whole record). A thin shell over
``fixable.analysis.rescue``: ``find_problem``, ``choose_router`` and ``rescue``.
"""

from __future__ import annotations

import json

import click

from fixable.cli.sample import _parse_options


@click.command()
@click.option("--model", "-m", required=True, help="Model: zoo name or checkpoint directory.")
@click.option("--backend", "-b", default="organism", show_default=True, help="Backend name.")
@click.option(
    "--task", "-t", default="chains", show_default=True, help="Task whose verifier checks answers."
)
@click.option(
    "--problem-id",
    default=None,
    help="A problem id of the task (searched among --problems of --split).",
)
@click.option(
    "--index",
    type=int,
    default=None,
    help="The INDEX-th problem of the task's --split (default 0).",
)
@click.option("--prompt", default=None, help="A prompt of your own (with --answer).")
@click.option("--answer", default=None, help="The gold answer of --prompt.")
@click.option(
    "--split", default="test", show_default=True, help="Task split to draw the problem from."
)
@click.option(
    "--problems",
    "n_problems",
    type=int,
    default=200,
    show_default=True,
    help="How many problems of the split to search for --problem-id.",
)
@click.option(
    "--budget",
    type=float,
    default=4000,
    show_default=True,
    help="Total cost-token budget (probe and scoring included; mix counts double).",
)
@click.option("--k", type=int, default=8, show_default=True, help="Probe samples.")
@click.option(
    "--interventions",
    default=None,
    help="Settings the router may choose, e.g. 'retry;temperature:0.3,1.3;mix:0.5'.",
)
@click.option(
    "--calibration",
    default=None,
    type=click.Path(file_okay=False),
    help="A run with probe rollouts of this model: the router's thresholds are the "
    "medians of its failures' features.",
)
@click.option(
    "--thresholds",
    default=None,
    help="Constant router thresholds, e.g. 'answer_dispersion=0.5,trajectory_uncertainty=0.3,reference_drift=0.2' "
    "(default: the thresholds shipped for the model's family, frozen on other models).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Run seed of the rollout seeds."
)
@click.option("--max-tokens", type=int, default=160, show_default=True, help="Longest completion.")
@click.option(
    "--backend-option",
    "-B",
    "backend_options",
    multiple=True,
    help="Backend constructor option, e.g. -B reference=path/to/base (repeatable).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the whole result as JSON.")
def command(
    model,
    backend,
    task,
    problem_id,
    index,
    prompt,
    answer,
    split,
    n_problems,
    budget,
    k,
    interventions,
    calibration,
    thresholds,
    seed,
    max_tokens,
    backend_options,
    as_json,
):
    """Rescue one problem: probe, diagnose, route, and sample until verified or out of budget."""
    from fixable.analysis.rescue import (
        DEFAULT_SETTINGS,
        AnswerOnly,
        choose_router,
        find_problem,
        rescue,
    )
    from fixable.interventions import parse_grid
    from fixable.registry import backends
    from fixable.tasks import get_task

    the_task = get_task(task)
    problem = find_problem(
        the_task,
        problem_id=problem_id,
        index=index,
        prompt=prompt,
        answer=answer,
        split=split,
        n_problems=n_problems,
        seed=seed,
    )
    settings = (
        [i.label for i in parse_grid(interventions)] if interventions else list(DEFAULT_SETTINGS)
    )
    engine = backends.create(
        backend, model, **(_parse_options(backend_options, "--backend-option") or {})
    )
    # the run stores rollouts under the backend's model identity, not the CLI spelling
    router, source = choose_router(
        engine.model_name, model, calibration=calibration, thresholds=thresholds
    )
    if source and not as_json:
        click.echo(source)
    verifier = AnswerOnly(the_task) if prompt is not None else the_task
    result = rescue(
        problem,
        engine,
        verifier,
        budget_tokens=budget,
        k=k,
        router=router,
        settings=settings,
        seed=seed,
        max_tokens=max_tokens,
    )
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, default=str))
        return
    verdict = "solved" if result.solved else "not solved"
    click.echo(
        f"{problem.id}: {verdict} ({result.stopped}); spent {result.tokens_spent:g} of "
        f"{result.budget_tokens:g} cost tokens"
    )
    if result.route:
        click.echo(
            f"routed to {result.route['setting']}"
            + (f" (branch {result.route['branch']})" if "branch" in result.route else "")
        )
    for call in result.trace:
        tail = (
            f", first success at sample {call.first_success}"
            if call.first_success is not None
            else ""
        )
        click.echo(
            f"  {call.phase:<7} {call.setting:<22} samples {len(call.sample_indices):>3} "
            f"tokens {call.tokens:>6} cost {call.cost_tokens:>8g}  correct {call.n_correct}{tail}"
        )
    if result.solved:
        click.echo(f"answer {result.answer} from {result.setting} sample {result.sample_index}:")
        click.echo(result.text)
