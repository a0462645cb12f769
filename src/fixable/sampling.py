"""Sampling orchestration: tasks × interventions × backend → rollouts in a run.

``sample`` plans every key (model, problem, phase, setting, sample index), skips the keys
already in the run, samples the rest in batches, verifies each completion with the task,
teacher-forces probe rollouts under the reference model when the backend has one, and
writes shards as it goes: planning, and rows from generations. The protocol built on it
(``sweep``: a probe of K rollouts per problem, then R rollouts per failed problem and
intervention setting) is ``fixable.protocol``; what the manifest records about the model
and the environment is ``fixable.provenance``; the check that a resumed run stays
comparable is ``fixable.store.Run.register_model``.

Every rollout's seed is ``rollout_seed(run_seed, f"{model}/{problem_id}",
f"{phase}/{setting}", sample_index)``, a pure function of its key, so with a seeded
backend an interrupted run resumed later holds exactly the rollouts of an uninterrupted
one, whatever the batching or the number of workers.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fixable.backends.base import SCORE, SEEDED, Backend, GenerationRequest, check_capabilities
from fixable.errors import CapabilityError, ConfigError, StoreError
from fixable.interventions import RETRY, Intervention
from fixable.provenance import environment, model_identity
from fixable.store import DEFAULT_FLUSH_EVERY, QuarantinedShard, Run, default_worker
from fixable.tasks.base import Task
from fixable.types import Problem, rollout_seed

log = logging.getLogger(__name__)

PROBE, RESCUE = "probe", "rescue"
DEFAULT_K, DEFAULT_R = 8, 32


@dataclass(frozen=True)
class Planned:
    """One rollout to sample: its key and its seed."""

    problem: Problem
    intervention: Intervention
    phase: str
    sample_index: int
    seed: int

    def key(self, model: str) -> tuple:
        return (model, self.problem.id, self.phase, self.intervention.label, self.sample_index)


@dataclass(frozen=True)
class Progress:
    """Where one ``sample`` call stands; passed to the ``progress`` callback after each batch."""

    model: str
    phase: str
    total: int  # rollouts this call samples (keys already present are not counted)
    done: int
    tokens: int  # generated so far in this call
    skipped: int  # keys already present, not sampled again
    elapsed_s: float


ProgressCallback = Callable[[Progress], None]


@dataclass
class SampleReport:
    """What one ``sample`` call did."""

    run: str
    model: str
    phase: str
    planned: int = 0  # keys in the plan (this worker's part)
    skipped: int = 0  # already present
    sampled: int = 0  # written now
    correct: int = 0
    errors: int = 0  # requests the backend reported as failed (stored with status "error")
    tokens: int = 0
    cost_tokens: float = 0.0
    wall_s: float = 0.0
    reference_scored: int = 0  # rollouts teacher-forced under the reference
    quarantined: list[QuarantinedShard] = field(default_factory=list)
    duplicates: int = 0  # keys present more than once in the whole run after this call
    # rollouts per source of their n_tokens: "token_ids", or, from a server without ids
    # (llama.cpp, OpenAI), "logprob_tokens" or "usage"; also kept in the manifest's models
    token_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["quarantined"] = [str(q) for q in self.quarantined]
        return d


# --------------------------------------------------------------------------- planning


def in_part(problem_id: str, part: tuple[int, int]) -> bool:
    """Whether ``problem_id`` belongs to worker ``part = (index, count)``: whole problems
    go to one worker, so a worker can run a sweep's probe and rescue on its own."""
    index, count = part
    if count == 1:
        return True
    digest = hashlib.blake2b(problem_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % count == index


def plan(
    model: str,
    problems: Sequence[Problem],
    phase: str,
    interventions: Sequence[Intervention],
    n: int,
    run_seed: int,
) -> list[Planned]:
    """Every rollout of ``n`` samples per problem per intervention, with its seed."""
    out = []
    for intervention in interventions:
        setting = f"{phase}/{intervention.label}"
        for problem in problems:
            for index in range(n):
                seed = rollout_seed(run_seed, f"{model}/{problem.id}", setting, index)
                out.append(Planned(problem, intervention, phase, index, seed))
    return out


# --------------------------------------------------------------------------- sampling


def _open_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.create(run)


def _register(
    run: Run, backend: Backend, *, run_seed: int, max_tokens: int, stop: tuple, invocation: dict
) -> None:
    """Record this call in the manifest; ``Run.register_model`` refuses one that would mix
    incompatible rollouts."""
    run.register_model(
        backend.model_name,
        model_identity(backend),
        {"max_tokens": max_tokens, "stop": list(stop)},
        run_seed=run_seed,
        invocation=invocation,
    )


def _finish(run: Run, invocation_id: str, report: SampleReport) -> None:
    def change(manifest: dict) -> None:
        for entry in manifest.get("invocations", []):
            if entry.get("id") == invocation_id:
                entry["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                entry["report"] = report.to_dict()

    run.update_manifest(change)


def sample(
    backend: Backend,
    task: Task,
    problems: Sequence[Problem],
    run_dir: Run | str | Path,
    *,
    phase: str = PROBE,
    interventions: Sequence[Intervention] | None = None,
    n: int | None = None,
    run_seed: int = 0,
    max_tokens: int = 160,
    batch_size: int = 256,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    score_reference: bool = True,
    worker: str | None = None,
    part: tuple[int, int] = (0, 1),
    config: dict | None = None,
    progress: ProgressCallback | None = None,
    executor: Any = None,
) -> SampleReport:
    """Sample ``n`` rollouts per problem per intervention into ``run_dir``, skipping keys
    already there.

    Args:
        phase: ``"probe"`` (``interventions`` must be retry only; ``n`` defaults to K=8)
            or ``"rescue"`` (``n`` defaults to R=32).
        score_reference: for probe rollouts, also store ``ref_logprobs`` (teacher-forced
            under the reference) when the backend can score and has a reference.
        part: ``(index, count)``: sample only the problems of this worker's share.
        config: the resolved run configuration, recorded in the manifest.
        progress: called with a ``Progress`` before the first batch and after each.
        executor: samples the missing keys (``fixable.executors``: a ``RayExecutor``
            spreads them over actors; ``backend`` must then come from its ``backend()``);
            None samples them here.
    """
    if phase not in (PROBE, RESCUE):
        raise ConfigError(f"phase must be 'probe' or 'rescue' (sweep runs both), got {phase!r}")
    interventions = list(interventions) if interventions else [RETRY]
    if phase == PROBE and [i.label for i in interventions] != [RETRY.label]:
        raise ConfigError(
            f"the probe samples at the default config (retry) only, got "
            f"{', '.join(i.label for i in interventions)}; use phase 'rescue' for interventions"
        )
    n = n if n is not None else (DEFAULT_K if phase == PROBE else DEFAULT_R)
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    check_capabilities(backend, interventions)
    if SEEDED not in backend.capabilities:
        log.warning(
            "backend %r does not promise seeded sampling: a resumed run will not equal "
            "an uninterrupted one token for token",
            backend.name,
        )

    run = _open_run(run_dir)
    already_quarantined = len(run.quarantined)
    # Before anything reads the run (readers refuse a run with a damaged shard): corrupt
    # shards are moved aside here, reported below, and their keys sampled again.
    run.check(full=True)
    model = backend.model_name
    worker = worker or default_worker()
    problems = [p for p in problems if in_part(p.id, part)]
    invocation_id = uuid.uuid4().hex
    _register(
        run,
        backend,
        run_seed=run_seed,
        max_tokens=max_tokens,
        stop=tuple(task.stop),
        invocation={
            "id": invocation_id,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "worker": worker,
            "argv": list(sys.argv),
            "model": model,
            "task": task.name,
            "phase": phase,
            "interventions": [i.label for i in interventions],
            "n": n,
            "run_seed": run_seed,
            "problems": len(problems),
            "part": list(part),
            "batch_size": batch_size,
            "score_reference": score_reference,
            "config": config,
            "environment": environment(),
        },
    )
    run.write_problems(problems, worker=worker)

    report = SampleReport(str(run.path), model, phase)
    # Read every page of every shard before trusting its keys: a corrupt shard is moved
    # aside and its keys sampled again below, and the user is told so.
    run.check(full=True)
    report.quarantined = run.quarantined[already_quarantined:]
    present = run.keys(model=model, phase=phase)
    planned = plan(model, problems, phase, interventions, n, run_seed)
    todo = [p for p in planned if p.key(model) not in present]
    report.planned, report.skipped = len(planned), len(planned) - len(todo)
    if report.quarantined:
        log.warning(
            "%d corrupt shard(s) quarantined; their keys are among the %d sampled now",
            len(report.quarantined),
            len(todo),
        )
    log.info(
        "%s %s: %d keys planned, %d present, %d to sample",
        model,
        phase,
        len(planned),
        report.skipped,
        len(todo),
    )

    started = time.monotonic()
    (sample_planned if executor is None else executor.sample_planned)(
        backend,
        task,
        todo,
        run,
        report=report,
        max_tokens=max_tokens,
        batch_size=batch_size,
        flush_every=flush_every,
        score_reference=score_reference,
        worker=worker,
        progress=progress,
    )
    report.wall_s = time.monotonic() - started
    duplicates = run.duplicates()
    report.duplicates = duplicates.num_rows
    if report.duplicates:
        first = ", ".join(str(tuple(r.values())[:-1]) for r in duplicates.slice(0, 3).to_pylist())
        log.warning(
            "%s holds %d key(s) more than once (e.g. %s): two writers sampled the same "
            "keys; give each worker its own --part",
            run.path,
            report.duplicates,
            first,
        )
    if report.errors:
        log.warning(
            "%d of %d requests failed in the backend; stored with status 'error'",
            report.errors,
            report.sampled,
        )
    if phase == RESCUE:
        spent = run.spending(model, RESCUE)
        run.update_manifest(lambda m: m.setdefault("budget", {}).__setitem__(model, spent))
    _finish(run, invocation_id, report)
    return report


def sample_planned(
    backend: Backend,
    task: Task,
    todo: Sequence[Planned],
    run: Run,
    *,
    report: SampleReport | None = None,
    max_tokens: int = 160,
    batch_size: int = 256,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    score_reference: bool = True,
    worker: str | None = None,
    progress: ProgressCallback | None = None,
) -> SampleReport:
    """Sample exactly the rollouts ``todo`` (from ``plan``) into ``run``, without looking at
    what the run holds: the building block of ``sample``, and of executors that split a
    plan among workers themselves. Counts go to ``report`` (a new one when None)."""
    model = backend.model_name
    worker = worker or default_worker()
    phase = todo[0].phase if todo else PROBE
    if report is None:
        report = SampleReport(str(run.path), model, phase, planned=len(todo))
    started = time.monotonic()

    def tick() -> None:
        if progress is not None:
            elapsed = time.monotonic() - started
            progress(
                Progress(
                    model, phase, len(todo), report.sampled, report.tokens, report.skipped, elapsed
                )
            )

    tick()
    scorer = _ReferenceScorer(backend, enabled=score_reference)
    with run.writer(worker=worker, flush_every=flush_every) as writer:
        for batch in _batches(todo, batch_size):
            rows = _sample_batch(backend, task, model, batch, max_tokens, worker, scorer)
            for row in rows:
                source = row.pop("_n_tokens_source")
                if source is not None:
                    report.token_counts[source] = report.token_counts.get(source, 0) + 1
            writer.extend(rows)
            for row in rows:
                report.sampled += 1
                report.correct += bool(row["correct"])
                report.errors += row["status"] == "error"
                report.tokens += row["n_tokens"]
                report.cost_tokens += row["cost_tokens"]
                report.reference_scored += row["ref_logprobs"] is not None
            tick()
    if set(report.token_counts) - {"token_ids"}:
        counts = dict(report.token_counts)

        def record(manifest: dict) -> None:
            entry = manifest.setdefault("models", {}).setdefault(model, {})
            total = entry.setdefault("n_tokens_source", {})
            for source, count in counts.items():
                total[source] = total.get(source, 0) + count

        run.update_manifest(record)
        log.warning(
            "%s: the backend returned no token ids for %d rollouts; their n_tokens (and "
            "cost) come from %s",
            model,
            sum(c for k, c in counts.items() if k != "token_ids"),
            " and ".join(k.replace("_", " ") for k in counts if k != "token_ids"),
        )
    return report


def _batches(todo: Sequence[Planned], size: int):
    # one intervention (and phase: probe rollouts are also scored) per backend call;
    # keep plan order inside it
    start = 0
    while start < len(todo):
        end = start + 1
        while (
            end < len(todo)
            and end - start < size
            and todo[end].intervention == todo[start].intervention
            and todo[end].phase == todo[start].phase
        ):
            end += 1
        yield todo[start:end]
        start = end


class _ReferenceScorer:
    """Teacher-forces completions under the reference (and under the policy where a
    backend's generations lack policy log-probs); turns itself off, once, when the backend
    has no reference."""

    def __init__(self, backend: Backend, enabled: bool):
        self.backend = backend
        self.enabled = enabled and SCORE in backend.capabilities
        self.can_score = SCORE in backend.capabilities

    def reference(self, prompts: list[str], completions: list[list[int]]) -> list | None:
        if not self.enabled or not prompts:
            return None
        try:
            return self.backend.score(prompts, completions, which="reference")
        except CapabilityError as e:
            log.info("no reference scores (%s): ref_logprobs left null", e)
            self.enabled = False
            return None

    def policy(self, prompts: list[str], completions: list[list[int]]) -> list | None:
        if not self.can_score or not prompts:
            return None
        return self.backend.score(prompts, completions, which="policy")


def _sample_batch(
    backend: Backend,
    task: Task,
    model: str,
    batch: Sequence[Planned],
    max_tokens: int,
    worker: str,
    scorer: _ReferenceScorer,
) -> list[dict]:
    intervention = batch[0].intervention
    requests = [
        GenerationRequest(p.problem.prompt, p.seed, max_tokens, tuple(task.stop)) for p in batch
    ]
    started = time.monotonic()
    generations = backend.generate(requests, intervention)
    if len(generations) != len(batch):
        raise StoreError(
            f"backend {backend.name!r} returned {len(generations)} generations "
            f"for {len(batch)} requests"
        )
    ok = [i for i, g in enumerate(generations) if g.finish_reason != "error"]
    verdicts = dict(
        zip(
            ok,
            task.verify_many([generations[i].text for i in ok], [batch[i].problem for i in ok]),
            strict=True,
        )
    )
    ref_scores: dict[int, list[float]] = {}
    policy_scores: dict[int, list[float]] = {}
    if batch[0].phase == PROBE:
        scored = [i for i in ok if generations[i].token_ids]
        prompts = [batch[i].problem.prompt for i in scored]
        completions = [list(generations[i].token_ids) for i in scored]
        ref = scorer.reference(prompts, completions)
        if ref is not None:
            ref_scores = dict(zip(scored, ref, strict=True))
        missing = [i for i in scored if generations[i].policy_logprobs is None]
        if missing:
            pol = scorer.policy(
                [batch[i].problem.prompt for i in missing],
                [list(generations[i].token_ids) for i in missing],
            )
            if pol is not None:
                policy_scores = dict(zip(missing, pol, strict=True))
    share = (time.monotonic() - started) / len(batch)
    rows = []
    for i, (planned, gen) in enumerate(zip(batch, generations, strict=True)):
        verdict = verdicts.get(i)
        if verdict is None:  # the backend gave up on this request: keep it, marked
            answer, correct, status = None, False, "error"
            reason, chain_correct = gen.error or "backend reported an error", None
        else:
            answer, correct, status = verdict.answer, verdict.correct, verdict.status
            reason = verdict.reason
            chain_correct = verdict.extra.get("chain_correct")
        # a server without token ids (llama.cpp, OpenAI) counts its tokens otherwise
        n_tokens = len(gen.token_ids) or int(gen.meta.get("n_tokens") or 0)
        unscorable = not gen.token_ids and gen.text and gen.finish_reason != "error"
        if unscorable and batch[0].phase == PROBE and scorer.enabled:
            reason = (reason + "; " if reason else "") + (
                "not scored under the reference: the backend returned no token ids"
            )
        policy_lp = gen.policy_logprobs if gen.policy_logprobs is not None else policy_scores.get(i)
        rows.append(
            {
                "model": model,
                "task": task.name,
                "problem_id": planned.problem.id,
                "phase": planned.phase,
                "intervention": intervention.kind,
                "setting": intervention.label,
                "params": intervention.params_json,
                "sample_index": planned.sample_index,
                "seed": planned.seed,
                "text": gen.text,
                "answer": answer,
                "correct": bool(correct),
                "chain_correct": chain_correct,
                "status": status,
                "reason": reason,
                "finish_reason": gen.finish_reason,
                "token_ids": list(gen.token_ids),
                "logprobs": list(gen.logprobs),
                "entropies": list(gen.entropies),
                "entropy_kind": gen.entropy_kind,
                "policy_logprobs": None if policy_lp is None else list(policy_lp),
                "ref_logprobs": ref_scores.get(i),
                "n_tokens": n_tokens,
                "cost_tokens": n_tokens * intervention.cost_factor,
                "time_s": gen.time_s or share,
                "worker": worker,
                "_n_tokens_source": (
                    "token_ids" if gen.token_ids else gen.meta.get("n_tokens_source")
                ),
            }
        )
    return rows


# Names that moved out of this module (fixable.provenance, fixable.protocol), still
# importable from here for code written against earlier versions.
_MOVED = {
    "weights_sha256": "fixable.provenance",
    "model_identity": "fixable.provenance",
    "environment": "fixable.provenance",
    "git_revision": "fixable.provenance",
    "_git_revision": "fixable.provenance",
    "SweepReport": "fixable.protocol",
    "probe_outcomes": "fixable.protocol",
    "failed_problems": "fixable.protocol",
    "rescue_budget": "fixable.protocol",
    "sweep": "fixable.protocol",
    "rescue_failures": "fixable.protocol",
    "sample_from_config": "fixable.protocol",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        module = importlib.import_module(_MOVED[name])
        return getattr(module, "git_revision" if name == "_git_revision" else name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
