"""The protocol of SPEC §3 over ``fixable.sampling``: probe every problem with K rollouts
at the default configuration, find the failures (0 of K correct, by
``fixable.failures.probe_status``, the definition the features use), then sample R
rollouts per failure and intervention setting. ``sample_from_config`` runs a
``fixable.config.RunConfig`` (what ``fixable sample`` does).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc

from fixable.backends.base import Backend, check_capabilities
from fixable.errors import ConfigError, StoreError
from fixable.failures import probe_status
from fixable.interventions import RETRY, Intervention
from fixable.sampling import (
    DEFAULT_K,
    DEFAULT_R,
    PROBE,
    RESCUE,
    ProgressCallback,
    SampleReport,
    _open_run,
    in_part,
    sample,
)
from fixable.store import Run
from fixable.tasks.base import Task
from fixable.types import Problem

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """Probe, the failures it found, and the rescue sweep over them."""

    probe: SampleReport
    failed: list[str]  # problem ids with 0 of K probe rollouts correct
    rescue: SampleReport | None
    budget: dict[str, dict]  # setting → rollouts, tokens and cost_tokens spent on it (whole run)


def probe_status_of(run: Run, model: str, *, k: int | None = None):
    """``fixable.failures.probe_status`` of ``model``'s probe rollouts in ``run`` (the
    first ``k`` samples of each problem when ``k`` is given)."""
    table = run.rollouts(
        columns=["model", "problem_id", "sample_index", "correct", "status"],
        order=False,
        model=model,
        phase=PROBE,
        setting=RETRY.label,
    )
    if k is not None:
        table = table.filter(pc.less(table["sample_index"], int(k)))
    return probe_status(table)


def probe_outcomes(run: Run, model: str, *, k: int | None = None) -> dict[str, dict]:
    """Per problem: probe rollouts, correct ones and failed requests (first ``k`` samples)."""
    status = probe_status_of(run, model, k=k)
    return {
        pid: {"problem_id": pid, "n": int(n), "correct": int(c), "errors": int(e)}
        for pid, n, c, e in zip(
            status["problem_id"],
            status["n_rollouts"],
            status["n_correct"],
            status["n_errors"],
            strict=True,
        )
    }


def failed_problems(
    run: Run, model: str, problem_ids: Sequence[str] | None = None, *, k: int = DEFAULT_K
) -> list[str]:
    """Problems whose K probe rollouts are all wrong (SPEC §3: 0 of K correct), by
    ``fixable.failures.probe_status``, the definition the features use too.

    A rollout the backend failed to produce (status "error") is no attempt: a problem
    counts as failed when none of its probe rollouts is correct and at least one was a
    real attempt. Problems with fewer than ``k`` probe rollouts are not judged yet.
    """
    status = probe_status_of(run, model, k=k).set_index("problem_id")
    ids = list(problem_ids) if problem_ids is not None else list(status.index)
    rollouts = status["n_rollouts"].to_dict()
    incomplete = [pid for pid in ids if rollouts.get(pid, 0) < k]
    if incomplete:
        raise StoreError(
            f"{len(incomplete)} problem(s) of {model!r} in {run.path} have fewer than {k} probe "
            f"rollouts (e.g. {incomplete[0]!r}): finish the probe first "
            f"(`fixable sample --phase probe --k {k} ...`)"
        )
    failed = status["failed"].to_dict()
    return [pid for pid in ids if failed[pid]]


def rescue_budget(run: Run, model: str) -> dict[str, dict]:
    """Per rescue setting of ``model``: problems, rollouts, tokens and cost_tokens spent."""
    return run.spending(model, RESCUE)


def sweep(
    backend: Backend,
    task: Task,
    problems: Sequence[Problem],
    run_dir: Run | str | Path,
    *,
    k: int = DEFAULT_K,
    r: int = DEFAULT_R,
    interventions: Sequence[Intervention] = (RETRY,),
    run_seed: int = 0,
    part: tuple[int, int] = (0, 1),
    progress: ProgressCallback | None = None,
    **options: Any,
) -> SweepReport:
    """Probe every problem with ``k`` rollouts, then sample ``r`` rollouts per failed
    problem per intervention setting; ``options`` go to ``sample``."""
    check_capabilities(backend, interventions)  # refuse before the probe, not after it
    run = _open_run(run_dir)
    problems = [p for p in problems if in_part(p.id, part)]
    probe = sample(
        backend,
        task,
        problems,
        run,
        phase=PROBE,
        n=k,
        run_seed=run_seed,
        progress=progress,
        **options,
    )
    failed, rescue = rescue_failures(
        backend,
        task,
        problems,
        run,
        k=k,
        r=r,
        interventions=interventions,
        run_seed=run_seed,
        progress=progress,
        **options,
    )
    return SweepReport(probe, failed, rescue, rescue_budget(run, backend.model_name))


def rescue_failures(
    backend: Backend,
    task: Task,
    problems: Sequence[Problem],
    run_dir: Run | str | Path,
    *,
    k: int = DEFAULT_K,
    r: int = DEFAULT_R,
    interventions: Sequence[Intervention] = (RETRY,),
    run_seed: int = 0,
    progress: ProgressCallback | None = None,
    on_failed: Callable[[list[str]], None] | None = None,
    **options: Any,
) -> tuple[list[str], SampleReport | None]:
    """The rescue half of a sweep: sample ``r`` rollouts per intervention setting for each
    of ``problems`` whose ``k`` probe rollouts in the run all failed. Returns the failed
    problem ids and the rescue's report (None when nothing failed); ``on_failed`` hears the
    failed ids before sampling starts; ``options`` go to ``sample``."""
    check_capabilities(backend, interventions)  # refused even when nothing failed
    run = _open_run(run_dir)
    failed = failed_problems(run, backend.model_name, [p.id for p in problems], k=k)
    log.info(
        "%s: %d of %d problems failed the probe", backend.model_name, len(failed), len(problems)
    )
    if on_failed is not None:
        on_failed(failed)
    if not failed:
        return failed, None
    failed_set = set(failed)
    report = sample(
        backend,
        task,
        [p for p in problems if p.id in failed_set],
        run,
        phase=RESCUE,
        interventions=interventions,
        n=r,
        run_seed=run_seed,
        progress=progress,
        **options,
    )
    return failed, report


def sample_from_config(
    config,
    *,
    progress: ProgressCallback | None = None,
    backend_factory: Callable[[str], Backend] | None = None,
    executor: Any = None,
) -> list:
    """Run a ``fixable.config.RunConfig``: the ``fixable sample`` command in Python.

    Returns one report per model (a SampleReport, or a SweepReport for phase "sweep").
    An ``executor`` (``fixable.executors``) builds each model's backend and samples.
    """
    from fixable.registry import backends

    if config.out is None:
        raise ConfigError("out is required: the run directory to write (--out RUN)")
    task = config.build_task()
    problems = task.problems(config.problems, seed=config.problem_seed, split=config.split)
    if backend_factory is None:
        # Every model name is checked before a run directory exists: a typo in the last
        # --model must not leave the first model's rollouts behind. (A backend that can
        # check a name without loading it says so with ``check_model``.)
        check_model = getattr(backends.get(config.backend), "check_model", None)
        if check_model is not None:
            for model in config.models:
                check_model(model, **config.backend_options)
    run = Run.create(config.out)
    options = dict(
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        flush_every=config.flush_every,
        score_reference=config.score_reference,
        worker=config.worker,
        config=config.to_dict(),
    )
    if executor is not None:
        options["executor"] = executor
    reports = []
    for model in config.models:
        if backend_factory is not None:
            backend = backend_factory(model)
        elif executor is not None:
            backend = executor.backend(config.backend, model, config.backend_options)
        else:
            backend = backends.create(config.backend, model, **config.backend_options)
        try:
            if config.phase == "sweep":
                reports.append(
                    sweep(
                        backend,
                        task,
                        problems,
                        run,
                        k=config.k,
                        r=config.r,
                        interventions=config.grid,
                        run_seed=config.seed,
                        part=config.part,
                        progress=progress,
                        **options,
                    )
                )
            elif config.phase == PROBE:
                reports.append(
                    sample(
                        backend,
                        task,
                        problems,
                        run,
                        phase=PROBE,
                        n=config.k,
                        run_seed=config.seed,
                        part=config.part,
                        progress=progress,
                        **options,
                    )
                )
            else:
                mine = [p for p in problems if in_part(p.id, config.part)]
                _, rescue = rescue_failures(
                    backend,
                    task,
                    mine,
                    run,
                    k=config.k,
                    r=config.r,
                    interventions=config.grid,
                    run_seed=config.seed,
                    progress=progress,
                    **options,
                )
                reports.append(
                    rescue
                    if rescue is not None
                    else SampleReport(run=str(run.path), model=backend.model_name, phase=RESCUE)
                )
        finally:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
    return reports
