"""``fixable rescue``: deployment-time rescue of one problem within a token budget.

Probes K samples; if all fail, computes the failure's features, routes it, spends the rest
of the budget on the routed intervention and prints the first verified success with the
trace of calls (``--json`` for the whole record). A thin shell over
``fixable.analysis.rescue.rescue``.
"""

from __future__ import annotations

import json

import click

from fixable.cli.sample import _parse_options
from fixable.errors import ConfigError


def _thresholds(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise ConfigError(f"--thresholds takes FEATURE=VALUE pairs, got {part!r}")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"threshold {key.strip()} must be a number, got {value!r}") from None
    return out


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
    from fixable.analysis.rescue import DEFAULT_SETTINGS, rescue
    from fixable.analysis.routing import SignatureRouter
    from fixable.interventions import parse_grid
    from fixable.registry import backends
    from fixable.tasks import get_task
    from fixable.types import Problem

    the_task = get_task(task)
    problem = _problem(
        the_task, problem_id, index, prompt, answer, split, n_problems, seed, Problem
    )
    if calibration and thresholds:
        raise ConfigError("give --calibration or --thresholds, not both")
    settings = (
        [i.label for i in parse_grid(interventions)] if interventions else list(DEFAULT_SETTINGS)
    )
    engine = backends.create(
        backend, model, **(_parse_options(backend_options, "--backend-option") or {})
    )
    source = None
    if calibration:
        # the run stores rollouts under the backend's model identity, not the CLI spelling
        router = _calibrated(calibration, engine.model_name)
    elif thresholds:
        router = SignatureRouter(thresholds=_thresholds(thresholds))
    else:
        router, source = _shipped(engine.model_name, model)
    if source and not as_json:
        click.echo(source)
    # a prompt of the user's own carries no task metadata (e.g. the chains solution a
    # task's full verify compares against): check its final answer only
    verifier = _AnswerOnly(the_task) if prompt is not None else the_task
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


class _AnswerOnly:
    """A task's own answer extraction and check, without its task-specific extras."""

    def __init__(self, task):
        self.task = task
        self.stop = task.stop

    def verify(self, text, problem):
        from fixable.tasks.base import Task

        return Task.verify(self.task, text, problem)


def _problem(task, problem_id, index, prompt, answer, split, n_problems, seed, Problem):
    if prompt is not None:
        if answer is None:
            raise ConfigError(
                "--prompt needs --answer (the gold answer the verifier checks against)"
            )
        if problem_id or index is not None:
            raise ConfigError("give --prompt or --problem-id/--index, not both")
        return Problem(id="user/prompt", prompt=prompt, answer=answer, task=task.name)
    problems = task.problems(
        n_problems if index is None else max(n_problems, index + 1), seed=seed, split=split
    )
    if problem_id is not None:
        for p in problems:
            if p.id == problem_id:
                return p
        raise ConfigError(
            f"problem {problem_id!r} is not among the first {len(problems)} {split} "
            f"problems of {task.name} (seed {seed}); raise --problems or check the id"
        )
    i = index or 0
    if not 0 <= i < len(problems):
        raise ConfigError(f"--index must be in [0, {len(problems) - 1}], got {i}")
    return problems[i]


def _shipped(model_name: str, spelled: str):
    """The shipped frozen thresholds of the model's family, or the error that says how to
    give thresholds."""
    from fixable.analysis.thresholds import DEFAULTS_FILE, default_router, load_defaults
    from fixable.demo import _zoo_info

    family = _zoo_info(model_name).get("family") or _zoo_info(spelled).get("family")
    router = default_router(model_name, family)
    if router is None:
        shipped = sorted(load_defaults().get("families") or {})
        raise ConfigError(
            "the routing rule needs thresholds: --calibration RUN (medians of the model's "
            "failures in an earlier run) or --thresholds FEATURE=VALUE,... "
            f"(frozen defaults ship only for the families {', '.join(shipped) or 'none'})"
        )
    note = (
        f"router thresholds: shipped defaults of family {family}, frozen on "
        f"{', '.join(router.calibration_models)} ({DEFAULTS_FILE.name})"
    )
    if model_name in router.calibration_models:
        note += f"; note: {model_name} is one of those calibration models"
    return router, note


def _calibrated(run_dir: str, model: str):
    from fixable.analysis.routing import SignatureRouter
    from fixable.features import failure_features
    from fixable.store import Run, sql_string

    table = Run(run_dir).rollouts(where=f"model = {sql_string(model)} AND phase = 'probe'")
    features = failure_features(table)
    if features.empty:
        raise ConfigError(
            f"{run_dir} has no failed probe rollouts of {model!r} to calibrate on; "
            f"sample some with `fixable sample --model {model} --phase probe --out {run_dir}`"
        )
    return SignatureRouter().fit(features)
