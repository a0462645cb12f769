"""Sampling orchestration: tasks × interventions × backend → rollouts in a run.

``sample`` plans every key (model, problem, phase, setting, sample index), skips the keys
already in the run, samples the rest in batches, verifies each completion with the task,
teacher-forces probe rollouts under the reference model when the backend has one, and
writes shards as it goes. ``sweep`` is the protocol of SPEC §3: a probe of K rollouts per
problem, then R rollouts per failed problem (0/K correct) and intervention setting.

Every rollout's seed is ``rollout_seed(run_seed, f"{model}/{problem_id}",
f"{phase}/{setting}", sample_index)``, a pure function of its key, so with a seeded
backend an interrupted run resumed later holds exactly the rollouts of an uninterrupted
one, whatever the batching or the number of workers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import platform
import socket
import subprocess
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
from fixable.store import (
    DEFAULT_FLUSH_EVERY,
    QuarantinedShard,
    Run,
    default_worker,
    sql_string,
)
from fixable.tasks.base import Task
from fixable.types import Problem, rollout_seed

log = logging.getLogger(__name__)

PROBE, RESCUE = "probe", "rescue"
DEFAULT_K, DEFAULT_R = 8, 32
_PACKAGES = (
    "fixable",
    "torch",
    "numpy",
    "pyarrow",
    "duckdb",
    "safetensors",
    "transformers",
    "tokenizers",
    "vllm",
    "httpx",
    "scikit-learn",
    "math-verify",
)


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


@dataclass
class SweepReport:
    """Probe, the failures it found, and the rescue sweep over them."""

    probe: SampleReport
    failed: list[str]  # problem ids with 0 of K probe rollouts correct
    rescue: SampleReport | None
    budget: dict[str, dict]  # setting → rollouts, tokens and cost_tokens spent on it (whole run)


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


# --------------------------------------------------------------------------- provenance


_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256, per process


def weights_sha256(directory: str | Path) -> dict[str, str]:
    """sha256 of every weights and config file of a model directory, by file name.

    Hashes are remembered per process by path, size and modification time: a sweep
    registers its model twice, and multi-gigabyte weights take seconds to hash.
    """
    directory = Path(directory)
    patterns = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "config.json", "tokenizer*.json")
    out = {}
    for pattern in patterns:
        for path in sorted(directory.glob(pattern)):
            stat = path.stat()
            memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if memo not in _HASHES:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                _HASHES[memo] = h.hexdigest()
            out[path.name] = _HASHES[memo]
    return out


def _model_directory(name: str) -> Path | None:
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from fixable.organism import zoo
    except ImportError:
        return None
    try:
        return Path(zoo.resolve(name))
    except Exception:  # not a zoo name: a served model id, or a Hub id
        return None


def model_identity(backend: Backend) -> dict:
    """The policy's name, backend and, where its files are reachable, their sha256.

    A backend may add its own fields through an optional ``identity()`` method (served
    model revisions, reference and checkpoint paths, …).
    """
    identity: dict[str, Any] = {"name": backend.model_name, "backend": backend.name}
    directory = _model_directory(backend.model_name)
    if directory is not None:
        identity["path"] = str(directory.resolve())
        identity["weights_sha256"] = weights_sha256(directory)
    hook = getattr(backend, "identity", None)
    if callable(hook):
        identity.update(hook())
    return identity


def _git_revision() -> dict:
    source = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode != 0:
            return {"revision": None}
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None}


def environment() -> dict:
    """Git revision, package versions, Python and platform: what the manifest records."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "git": _git_revision(),
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
    }


# --------------------------------------------------------------------------- sampling


def _open_run(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else Run.create(run)


def _register(
    run: Run, backend: Backend, *, run_seed: int, max_tokens: int, stop: tuple, invocation: dict
) -> None:
    """Record this call in the manifest, refusing one that would mix incompatible rollouts."""
    identity = model_identity(backend)
    sampling = {"max_tokens": max_tokens, "stop": list(stop)}
    model = backend.model_name

    def change(manifest: dict) -> None:
        if manifest.get("run_seed") is None:
            manifest["run_seed"] = run_seed
        elif manifest["run_seed"] != run_seed:
            raise StoreError(
                f"{run.path} was sampled with seed {manifest['run_seed']}, got seed {run_seed}: "
                f"resume with --seed {manifest['run_seed']} or write to a new --out"
            )
        models = manifest.setdefault("models", {})
        known = models.get(model)
        if known is None:
            models[model] = {"identity": identity, "sampling": sampling}
        else:
            old_hashes, new_hashes = _hashes(known["identity"]), _hashes(identity)
            changed = [
                k for k in old_hashes.keys() & new_hashes.keys() if old_hashes[k] != new_hashes[k]
            ]
            if changed:
                raise StoreError(
                    f"model {model!r} in {run.path} was sampled from other weights "
                    f"({changed[0]} changed its sha256); new rollouts would mix two models: "
                    f"write to a new --out"
                )
            old_dtype, new_dtype = known["identity"].get("dtype"), identity.get("dtype")
            if old_dtype is not None and new_dtype is not None and old_dtype != new_dtype:
                raise StoreError(
                    f"model {model!r} in {run.path} was sampled in {old_dtype}, now {new_dtype}: "
                    f"the precision changes the rollouts; resume with dtype={old_dtype} or "
                    f"write to a new --out"
                )
            if known["identity"].get("backend") != identity["backend"]:
                raise StoreError(
                    f"model {model!r} in {run.path} was sampled with backend "
                    f"{known['identity'].get('backend')!r}, now {identity['backend']!r}: "
                    f"write to a new --out"
                )
            for name, value in sampling.items():
                if known["sampling"].get(name) != value:
                    raise StoreError(
                        f"model {model!r} in {run.path} was sampled with {name}="
                        f"{known['sampling'].get(name)!r}, now {value!r}: use the same value "
                        f"to resume, or write to a new --out"
                    )
        manifest.setdefault("invocations", []).append(invocation)

    run.update_manifest(change)


def _hashes(identity: Any, prefix: str = "") -> dict[str, str]:
    """Every file hash in a (nested) identity, by its path in the identity."""
    out: dict[str, str] = {}
    if isinstance(identity, dict):
        for key, value in identity.items():
            if key == "weights_sha256" and isinstance(value, dict):
                out.update({f"{prefix}{name}": h for name, h in value.items()})
            else:
                out.update(_hashes(value, f"{prefix}{key}/"))
    return out


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
    present = run.keys(f"model = {sql_string(model)} AND phase = {sql_string(phase)}")
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
        spent = rescue_budget(run, model)
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


# --------------------------------------------------------------------------- the protocol


def probe_outcomes(run: Run, model: str, *, k: int | None = None) -> dict[str, dict]:
    """Per problem: probe rollouts, correct ones and failed requests (first ``k`` samples)."""
    where = f"model = {sql_string(model)} AND phase = 'probe' AND setting = 'retry'"
    if k is not None:
        where += f" AND sample_index < {int(k)}"
    table = run.query(
        "SELECT problem_id, count(*) AS n, CAST(sum(CAST(correct AS INTEGER)) AS BIGINT) AS correct, "
        f"CAST(sum(CAST(status = 'error' AS INTEGER)) AS BIGINT) AS errors FROM rollouts WHERE {where} "
        "GROUP BY problem_id"
    )
    return {r["problem_id"]: r for r in table.to_pylist()}


def failed_problems(
    run: Run, model: str, problem_ids: Sequence[str] | None = None, *, k: int = DEFAULT_K
) -> list[str]:
    """Problems whose K probe rollouts are all wrong (SPEC §3: 0 of K correct).

    A rollout the backend failed to produce (status "error") is no attempt: a problem
    counts as failed when none of its probe rollouts is correct and at least one was a
    real attempt. Problems with fewer than ``k`` probe rollouts are not judged yet.
    """
    outcomes = probe_outcomes(run, model, k=k)
    ids = list(problem_ids) if problem_ids is not None else sorted(outcomes)
    incomplete = [pid for pid in ids if outcomes.get(pid, {"n": 0})["n"] < k]
    if incomplete:
        raise StoreError(
            f"{len(incomplete)} problem(s) of {model!r} in {run.path} have fewer than {k} probe "
            f"rollouts (e.g. {incomplete[0]!r}): finish the probe first "
            f"(`fixable sample --phase probe --k {k} ...`)"
        )
    return [
        pid
        for pid in ids
        if outcomes[pid]["correct"] == 0 and outcomes[pid]["n"] > outcomes[pid]["errors"]
    ]


def rescue_budget(run: Run, model: str) -> dict[str, dict]:
    """Per rescue setting of ``model``: problems, rollouts, tokens and cost_tokens spent."""
    table = run.query(
        "SELECT setting, count(DISTINCT problem_id) AS problems, count(*) AS rollouts, "
        "sum(n_tokens) AS tokens, sum(cost_tokens) AS cost_tokens FROM rollouts "
        f"WHERE model = {sql_string(model)} AND phase = 'rescue' GROUP BY setting ORDER BY setting"
    )
    return {
        r.pop("setting"): {k: (float(v) if k == "cost_tokens" else int(v)) for k, v in r.items()}
        for r in table.to_pylist()
    }


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
