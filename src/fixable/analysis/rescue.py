"""Deployment-time rescue (SPEC §4): with a verifier at inference, probe K samples; if all
fail, diagnose the failure from its features, spend the rest of the budget on the routed
intervention, and return the first verified success with the full trace of calls.

The features are computed by the very code the offline analysis uses
(``fixable.features.failure_features`` on the K probe rollouts), and the seeds follow the
sampling engine's scheme (``fixable.sampling.plan``), so a rescue is reproducible from its
seed and comparable with an offline sweep of the same model.

The budget is a hard cap on cost tokens (generated tokens × forward passes per token, so
``mix`` pays double; teacher-forced scoring for the reference-drift feature is charged one
pass per scored token): before each call the remaining budget is split over its samples and
each request's ``max_tokens`` is lowered to fit, so the total never exceeds the budget.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import pyarrow as pa

from fixable.analysis.routing import Router, SignatureRouter
from fixable.backends.base import SCORE, Backend, GenerationRequest
from fixable.errors import CapabilityError, ConfigError
from fixable.features import FEATURES, failure_features
from fixable.interventions import Intervention, parse_intervention
from fixable.schema import ROLLOUTS
from fixable.types import Problem, Verdict

logger = logging.getLogger(__name__)

DEFAULT_SETTINGS = (
    "retry",
    "temperature(T=0.3)",
    "temperature(T=0.6)",
    "temperature(T=1.3)",
    "mix(alpha=0.5)",
)


@dataclass
class Call:
    """One backend call of a rescue, as recorded in its trace."""

    phase: str  # "probe", "score" or "rescue"
    setting: str  # intervention label (for "score": "reference" or "policy")
    params: dict
    sample_indices: list[int]
    seeds: list[int]
    max_tokens: int  # per request, after fitting the remaining budget
    tokens: int  # generated (or scored) tokens
    cost_tokens: float  # tokens × forward passes per token
    n_correct: int = 0
    first_success: int | None = None  # sample index of the first verified success


@dataclass
class RescueResult:
    """What a rescue did: whether it found a verified answer, how, and at what cost."""

    problem_id: str
    model: str
    solved: bool
    stopped: str  # "probe solved", "rescued" or "budget exhausted"
    budget_tokens: float
    tokens_spent: float
    text: str | None = None  # the first verified completion
    answer: str | None = None
    setting: str | None = None  # the setting that produced it
    phase: str | None = None
    sample_index: int | None = None
    features: dict = field(default_factory=dict)  # F1-F3 of the failed probe (+ ablations, flags)
    route: dict = field(default_factory=dict)  # routed setting, the rule's branch, thresholds
    trace: list[Call] = field(default_factory=list)
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _verify_with(verifier, problem: Problem) -> Callable[[str], Verdict]:
    if hasattr(verifier, "verify"):
        return lambda text: verifier.verify(text, problem)
    if callable(verifier):

        def check(text: str) -> Verdict:
            ok = bool(verifier(text))
            return Verdict(None, ok, "passed" if ok else "failed")

        return check
    raise ConfigError(
        f"verifier must be a Task (with .verify) or a callable text -> bool, got {type(verifier).__name__}"
    )


def _seeds(
    model: str,
    problem: Problem,
    phase: str,
    intervention: Intervention,
    start: int,
    count: int,
    seed: int,
) -> list[int]:
    from fixable.sampling import plan  # the sampling engine's seed scheme, reused as is

    planned = plan(model, [problem], phase, [intervention], start + count, seed)
    return [p.seed for p in planned[start : start + count]]


def rescue(
    problem: Problem,
    backend: Backend,
    verifier,
    *,
    budget_tokens: float,
    k: int = 8,
    router: Router | None = None,
    settings: Sequence[str] = DEFAULT_SETTINGS,
    seed: int = 0,
    chunk: int = 4,
    max_tokens: int = 160,
    stop: Sequence[str] | None = None,
) -> RescueResult:
    """Probe, diagnose, route and rescue one problem within ``budget_tokens`` cost tokens.

    Args:
        problem: the problem (its prompt is sent as is).
        backend: any ``Backend``; reference drift needs its ``score`` capability and a reference.
        verifier: a ``Task`` (its ``verify``) or a callable ``text -> bool``; the latter
            extracts no answers, so answer dispersion is then unavailable.
        budget_tokens: total cost-token budget, probe and scoring included.
        k: probe samples.
        router: maps the failure's features to a setting. The default
            ``SignatureRouter`` needs thresholds: fit it on earlier failures of the model
            (``SignatureRouter().fit(features)``) or give constants; a median over this
            single failure would be meaningless, so an unfitted median router is refused.
        settings: the settings the router may choose from (those the backend cannot serve
            are left out).
        seed: the run seed of the rollout seed scheme.
        chunk: rescue samples per backend call; a call's samples after the first success
            are still paid for (they were generated) and show in the trace.
    """
    if budget_tokens <= 0:
        raise ConfigError(f"budget_tokens must be > 0, got {budget_tokens!r}")
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k!r}")
    if chunk < 1:
        raise ConfigError(f"chunk must be at least 1, got {chunk!r}")
    router = router if router is not None else SignatureRouter(thresholds="median")
    if (
        isinstance(router, SignatureRouter)
        and router.thresholds == "median"
        and not hasattr(router, "thresholds_")
    ):
        raise ConfigError(
            "the routing rule needs thresholds: fit it on earlier failures "
            "(SignatureRouter().fit(features), or `fixable rescue --calibration RUN`) "
            "or pass constants (`--thresholds answer_dispersion=0.5,...`)"
        )
    verify = _verify_with(verifier, problem)
    stop = tuple(stop if stop is not None else getattr(verifier, "stop", ()))
    model = backend.model_name
    result = RescueResult(
        problem.id, model, False, "budget exhausted", float(budget_tokens), 0.0, seed=seed
    )

    def remaining() -> float:
        return budget_tokens - result.tokens_spent

    def sample(phase: str, intervention: Intervention, start: int, count: int):
        # one token of slack per request: some backends append the end token past max_tokens
        per_request = math.floor(remaining() / (count * intervention.cost_factor)) - 1
        cap = min(max_tokens, per_request)
        if cap < 1:
            return None
        seeds = _seeds(model, problem, phase, intervention, start, count, seed)
        requests = [GenerationRequest(problem.prompt, s, cap, stop) for s in seeds]
        generations = backend.generate(requests, intervention)
        verdicts = [
            verify(g.text) if g.finish_reason != "error" else Verdict(None, False, "error", g.error)
            for g in generations
        ]
        tokens = sum(len(g.token_ids) for g in generations)
        call = Call(
            phase,
            intervention.label,
            intervention.params,
            list(range(start, start + count)),
            seeds,
            cap,
            tokens,
            tokens * intervention.cost_factor,
        )
        hits = [i for i, v in enumerate(verdicts) if v.correct]
        call.n_correct = len(hits)
        call.first_success = start + hits[0] if hits else None
        result.trace.append(call)
        result.tokens_spent += call.cost_tokens
        if hits:
            g, v = generations[hits[0]], verdicts[hits[0]]
            result.solved, result.text, result.answer = True, g.text, v.answer
            result.setting, result.phase, result.sample_index = (
                intervention.label,
                phase,
                start + hits[0],
            )
        return generations, verdicts, seeds

    # 1. probe
    retry = Intervention("retry")
    probed = sample("probe", retry, 0, k)
    if probed is None:
        return result
    if result.solved:
        result.stopped = "probe solved"
        return result
    generations, verdicts, seeds = probed

    # 2. diagnose: the same features as the offline analysis, from these K failed rollouts
    valid = [i for i, g in enumerate(generations) if g.finish_reason != "error" and g.token_ids]
    reference = _score(
        backend, problem, [generations[i] for i in valid], "reference", result, remaining
    )
    policy = [generations[i].policy_logprobs for i in valid]
    if any(p is None for p in policy):
        policy = _score(
            backend, problem, [generations[i] for i in valid], "policy", result, remaining
        )
    table = _probe_table(
        model,
        problem,
        [generations[i] for i in valid],
        [verdicts[i] for i in valid],
        [seeds[i] for i in valid],
        valid,
        policy,
        reference,
    )
    features = failure_features(table)
    if not hasattr(verifier, "verify") and not features.empty:
        # a bare text -> bool verifier extracts no answers: dispersion is unknown, not 0
        features[["answer_dispersion", "modal_answer_share"]] = float("nan")
    if features.empty:
        result.stopped = "budget exhausted" if remaining() <= 0 else "no valid probe rollouts"
        return result
    row = features.iloc[0]
    result.features = {
        c: _plain(row[c]) for c in features.columns if c not in ("model", "problem_id", "task")
    }

    # 3. route, among the settings this backend can serve
    usable = []
    for label in settings:
        intervention = parse_intervention(label)
        if intervention.kind not in backend.capabilities:
            continue
        if intervention.kind == "mix" and not row["reference_drift_available"]:
            continue  # no reference: mixing with it is impossible
        usable.append(intervention.label)
    if not usable:
        raise CapabilityError(
            f"backend {backend.name!r} can serve none of the settings {list(settings)}"
        )
    routed = router.route(features, usable)[0]
    result.route = {"setting": routed, "settings": usable}
    if isinstance(router, SignatureRouter):
        decision = router.decide(features, usable).iloc[0]
        result.route |= {
            "branch": decision["branch"],
            "fallback_to_retry": bool(decision["fallback_to_retry"]),
            "thresholds": router.thresholds_for(features),
        }

    # 4. rescue within what is left, chunk by chunk, until the first verified success
    intervention = parse_intervention(routed)
    per_sample = max(1.0, float(row["mean_tokens"])) * intervention.cost_factor
    start = 0
    while remaining() >= intervention.cost_factor:
        count = max(1, min(chunk, int(remaining() // per_sample)))
        if sample("rescue", intervention, start, count) is None:
            break
        start += count
        if result.solved:
            result.stopped = "rescued"
            return result
    result.stopped = "budget exhausted"
    return result


def _score(
    backend, problem, generations, which: str, result: RescueResult, remaining
) -> list | None:
    if SCORE not in backend.capabilities or not generations:
        return None
    tokens = sum(len(g.token_ids) for g in generations)
    if tokens > remaining():
        logger.info("not enough budget left to score the probe under the %s", which)
        return None
    try:
        scores = backend.score(
            [problem.prompt] * len(generations),
            [list(g.token_ids) for g in generations],
            which=which,
        )
    except CapabilityError as e:
        logger.info("no %s scores: %s", which, e)
        return None
    result.trace.append(Call("score", which, {}, [], [], 0, tokens, float(tokens)))
    result.tokens_spent += tokens
    return scores


def _probe_table(
    model, problem, generations, verdicts, seeds, indices, policy, reference
) -> pa.Table:
    n = len(generations)
    columns = {
        "model": [model] * n,
        "task": [problem.task] * n,
        "problem_id": [problem.id] * n,
        "phase": ["probe"] * n,
        "intervention": ["retry"] * n,
        "setting": ["retry"] * n,
        "params": ["{}"] * n,
        "sample_index": indices,
        "seed": seeds,
        "text": [g.text for g in generations],
        "answer": [v.answer for v in verdicts],
        "correct": [v.correct for v in verdicts],
        "chain_correct": [None] * n,
        "status": [v.status for v in verdicts],
        "reason": [v.reason for v in verdicts],
        "finish_reason": [g.finish_reason for g in generations],
        "token_ids": [list(g.token_ids) for g in generations],
        "logprobs": [list(g.logprobs) for g in generations],
        "entropies": [list(g.entropies) for g in generations],
        "entropy_kind": [g.entropy_kind for g in generations],
        "policy_logprobs": [None if p is None else list(p) for p in (policy or [None] * n)],
        "ref_logprobs": [None if r is None else list(r) for r in (reference or [None] * n)],
        "n_tokens": [len(g.token_ids) for g in generations],
        "cost_tokens": [float(len(g.token_ids)) for g in generations],
        "time_s": [g.time_s for g in generations],
        "worker": ["rescue"] * n,
    }
    return pa.table(columns, schema=ROLLOUTS)


def _plain(value):
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


# --------------------------------------------------------------------------- set-up
# What ``fixable rescue`` needs before it calls ``rescue``, in the library so that a Python
# user gets the same problem, verifier and router as the command.


def parse_thresholds(text: str) -> dict[str, float]:
    """``"answer_dispersion=0.5,reference_drift=0.2"`` → a mapping feature → threshold."""
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


class AnswerOnly:
    """A task's own answer extraction and check, without its task-specific extras: the
    verifier of a prompt of the user's own, which carries no task metadata (e.g. the
    chains solution a task's full verify compares against)."""

    def __init__(self, task):
        self.task = task
        self.stop = task.stop

    def verify(self, text, problem):
        from fixable.tasks.base import Task

        return Task.verify(self.task, text, problem)


def find_problem(
    task,
    *,
    problem_id: str | None = None,
    index: int | None = None,
    prompt: str | None = None,
    answer: str | None = None,
    split: str = "test",
    n_problems: int = 200,
    seed: int = 0,
) -> Problem:
    """The problem to rescue: a prompt of the user's own (with its gold ``answer``), the
    task's problem ``problem_id`` among its first ``n_problems`` of ``split``, or its
    ``index``-th problem (default the first)."""
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


def shipped_router(model_name: str, spelled: str | None = None):
    """(the shipped frozen router of the model's family, a line saying where its
    thresholds come from), or the error that says how to give thresholds."""
    from fixable.analysis.thresholds import DEFAULTS_FILE, default_router, load_defaults
    from fixable.demo import _zoo_info

    family = _zoo_info(model_name).get("family") or _zoo_info(spelled or model_name).get("family")
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


def calibrated_router(run_dir, model: str) -> SignatureRouter:
    """The signature router with the medians of ``model``'s failures in an earlier run
    ``run_dir`` as thresholds."""
    from fixable.store import Run

    table = Run(run_dir).rollouts(model=model, phase="probe")
    features = failure_features(table)
    if features.empty:
        raise ConfigError(
            f"{run_dir} has no failed probe rollouts of {model!r} to calibrate on; "
            f"sample some with `fixable sample --model {model} --phase probe --out {run_dir}`"
        )
    return SignatureRouter().fit(features)


def choose_router(
    model_name: str,
    spelled: str | None = None,
    *,
    calibration=None,
    thresholds: str | Mapping[str, float] | None = None,
):
    """(router, note): calibrated on an earlier run, with constant thresholds, or else the
    shipped thresholds of the model's family (the note says so). ``model_name`` is the
    backend's, under which a run stores rollouts; ``spelled`` the name the user gave."""
    if calibration and thresholds:
        raise ConfigError("give --calibration or --thresholds, not both")
    if calibration:
        return calibrated_router(calibration, model_name), None
    if thresholds:
        given = parse_thresholds(thresholds) if isinstance(thresholds, str) else dict(thresholds)
        return SignatureRouter(thresholds=given), None
    return shipped_router(model_name, spelled)


__all__ = [
    "Call",
    "RescueResult",
    "rescue",
    "DEFAULT_SETTINGS",
    "FEATURES",
    "AnswerOnly",
    "find_problem",
    "choose_router",
    "calibrated_router",
    "shipped_router",
    "parse_thresholds",
]
