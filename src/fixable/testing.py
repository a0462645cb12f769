"""The contract a backend or a task keeps, as checks a plug-in author runs in their tests.

``check_backend(backend)`` and ``check_task(task)`` raise ``ContractError`` naming the
first broken promise; they return a short report of what was checked otherwise. The
built-in backends and tasks are held to them in fixable's own tests, and so is the
example plug-in there, installed and discovered through its entry points.

    from fixable.testing import check_backend, check_task

    def test_my_backend_keeps_the_contract():
        check_backend(MyBackend("my-model"), prompts=["2+2=", "3+5="])

What is checked, for a backend:
- identity: ``name``, ``model_name`` and ``capabilities`` drawn from the known flags;
- shapes: one ``Generation`` per request, in order, with as many log-probs and entropies as
  tokens, all finite, log-probs ≤ 0 and entropies ≥ 0, no more tokens than asked for, a
  known ``finish_reason``, ``entropy_kind`` "full" exactly when ``full_entropy`` is claimed;
- every claimed intervention samples (``checkpoint`` when a checkpoint name is given);
- ``seeded``, when claimed: a request's tokens do not depend on the batch it is in;
- ``score``, when claimed: teacher-forced log-probs of sampled tokens match their sampled
  log-probs at the default temperature;
- a request the backend cannot serve (``bad_prompt``) comes back as an error row or an
  exception, never as a successful completion.
For a task: deterministic, unique problem ids of its own name; gold answers verify;
an empty completion does not; ``verify_many`` agrees with ``verify``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from fixable.backends.base import (
    CHECKPOINT,
    FULL_ENTROPY,
    RETRY,
    SCORE,
    SEEDED,
    Backend,
    Generation,
    GenerationRequest,
)
from fixable.interventions import KINDS, Intervention
from fixable.tasks.base import Task
from fixable.types import Problem


def known_capabilities() -> frozenset[str]:
    """The flags a backend may claim: every intervention kind in ``KINDS`` (read when
    called, so a kind added there is known) plus ``score``, ``full_entropy``, ``seeded``."""
    return frozenset(KINDS) | {SCORE, FULL_ENTROPY, SEEDED}


FINISH_REASONS = ("stop", "length", "error")

__all__ = ["ContractError", "check_backend", "check_task"]


class ContractError(AssertionError):
    """A backend or task broke the contract; the message says which promise and where."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ContractError(message)


def _check_generation(gen: Generation, request: GenerationRequest, where: str, full: bool):
    _require(isinstance(gen, Generation), f"{where}: not a Generation but {type(gen).__name__}")
    _require(
        gen.finish_reason in FINISH_REASONS,
        f"{where}: finish_reason {gen.finish_reason!r} is not one of {FINISH_REASONS}",
    )
    if gen.finish_reason == "error":
        _require(bool(gen.error), f"{where}: an error row must say why (Generation.error)")
        return
    n = len(gen.token_ids)
    _require(
        n <= request.max_tokens, f"{where}: {n} tokens, more than max_tokens={request.max_tokens}"
    )
    _require(len(gen.logprobs) == n, f"{where}: {len(gen.logprobs)} log-probs for {n} tokens")
    _require(len(gen.entropies) == n, f"{where}: {len(gen.entropies)} entropies for {n} tokens")
    if gen.policy_logprobs is not None:
        _require(
            len(gen.policy_logprobs) == n,
            f"{where}: {len(gen.policy_logprobs)} policy log-probs for {n} tokens",
        )
    for i, lp in enumerate(gen.logprobs):
        _require(math.isfinite(lp) and lp <= 1e-4, f"{where}: log-prob {lp} at token {i}")
    for i, h in enumerate(gen.entropies):
        _require(math.isfinite(h) and h >= -1e-4, f"{where}: entropy {h} at token {i}")
    expected = "full" if full else gen.entropy_kind
    _require(
        gen.entropy_kind == expected and gen.entropy_kind in ("full", "topk"),
        f"{where}: entropy_kind {gen.entropy_kind!r} but full_entropy "
        f"{'is' if full else 'is not'} claimed",
    )


def _generate(backend: Backend, requests, intervention, where: str) -> list[Generation]:
    out = backend.generate(list(requests), intervention)
    _require(
        isinstance(out, list) and len(out) == len(requests),
        f"{where}: {len(out) if isinstance(out, list) else type(out).__name__} generations "
        f"for {len(requests)} requests",
    )
    full = FULL_ENTROPY in backend.capabilities
    for i, (gen, req) in enumerate(zip(out, requests, strict=True)):
        _check_generation(gen, req, f"{where}, request {i}", full)
    return out


def _representative(kind: str, checkpoint: str | None) -> Intervention | None:
    """The kind at its declared example value (a checkpoint: the one given, if any)."""
    value = checkpoint if kind == CHECKPOINT else KINDS[kind].example
    if kind == CHECKPOINT and checkpoint is None:
        return None
    return Intervention(kind, value)


def check_backend(
    backend: Backend,
    prompts: Sequence[str] = ("1+1=", "2+3="),
    *,
    max_tokens: int = 8,
    checkpoint: str | None = None,
    bad_prompt: str | None = None,
    score_atol: float = 1e-3,
    seed: int = 0,
) -> dict:
    """Check ``backend`` against the contract; raise ``ContractError`` at the first breach.

    Args:
        prompts: a few prompts the model can continue (in its alphabet or vocabulary).
        max_tokens: completion length to ask for (small: the checks sample a few dozen).
        checkpoint: a checkpoint name to sample when ``checkpoint`` is claimed.
        bad_prompt: a request the backend cannot serve (outside its alphabet, too long…),
            to check it fails as an error row or an exception rather than a success.
        score_atol: how far teacher-forced log-probs may be from the sampled ones (raise it
            for bf16 engines).
    Returns what was checked, by name.
    """
    caps = getattr(backend, "capabilities", None)
    _require(isinstance(getattr(backend, "name", None), str), "backend.name must be a str")
    _require(isinstance(caps, frozenset), "backend.capabilities must be a frozenset")
    known = known_capabilities()
    unknown = set(caps) - known
    _require(not unknown, f"unknown capabilities {sorted(unknown)}; known: {sorted(known)}")
    _require(RETRY in caps, "every backend samples the policy as it is: 'retry' must be claimed")
    _require(
        isinstance(backend.model_name, str) and bool(backend.model_name),
        "backend.model_name must be a non-empty str",
    )
    checked = ["identity"]
    rng = random.Random(seed)
    requests = [
        GenerationRequest(prompt=p, seed=rng.getrandbits(62), max_tokens=max_tokens)
        for p in prompts
        for _ in range(2)
    ]
    retry = Intervention(RETRY)
    base = _generate(backend, requests, retry, "retry")
    checked.append("shapes")
    for kind in sorted(set(caps) & set(KINDS) - {RETRY}):
        intervention = _representative(kind, checkpoint)
        if intervention is not None:
            _generate(backend, requests, intervention, intervention.label)
            checked.append(intervention.label)

    if SEEDED in caps:
        order = list(range(len(requests)))
        random.Random(seed + 1).shuffle(order)
        shuffled = _generate(backend, [requests[i] for i in order], retry, "retry (shuffled)")
        alone = _generate(backend, requests[:1], retry, "retry (alone)")
        for j, i in enumerate(order):
            _require(
                shuffled[j].token_ids == base[i].token_ids,
                f"seeded is claimed, but request {i}'s tokens changed when the batch was shuffled",
            )
        _require(
            alone[0].token_ids == base[0].token_ids,
            "seeded is claimed, but a request sampled alone got other tokens than in a batch",
        )
        checked.append("seeded")

    if SCORE in caps:
        ok = [g for g in base if g.finish_reason != "error" and g.token_ids]
        scored = backend.score(
            [r.prompt for r, g in zip(requests, base, strict=True) if g in ok],
            [g.token_ids for g in ok],
            which="policy",
        )
        _require(len(scored) == len(ok), f"score: {len(scored)} rows for {len(ok)} completions")
        for i, (row, gen) in enumerate(zip(scored, ok, strict=True)):
            _require(len(row) == len(gen.token_ids), f"score row {i}: {len(row)} log-probs")
            for t, (a, b) in enumerate(zip(row, gen.logprobs, strict=True)):
                _require(
                    abs(a - b) <= score_atol,
                    f"score row {i}, token {t}: teacher-forced {a:.6f} vs sampled {b:.6f} "
                    f"at T=1 (atol {score_atol})",
                )
        checked.append("score")

    if bad_prompt is not None:
        bad = GenerationRequest(prompt=bad_prompt, seed=1, max_tokens=max_tokens)
        try:
            out = backend.generate([bad], retry)
        except Exception:  # noqa: BLE001 - raising is one of the two allowed answers
            pass
        else:
            _require(
                len(out) == 1 and out[0].finish_reason == "error" and bool(out[0].error),
                "a request the backend cannot serve came back as a successful completion; "
                "it must be an error row (finish_reason='error', error=why) or an exception",
            )
        checked.append("failed request")
    return {"backend": backend.name, "model": backend.model_name, "checked": checked}


def check_task(task: Task, n: int = 8, *, split: str = "test", wrong_completion: str = "") -> dict:
    """Check ``task`` against the contract; raise ``ContractError`` at the first breach.

    Args:
        n: how many problems to draw.
        split: the split to draw them from.
        wrong_completion: a completion that solves none of them (default: empty).
    """
    _require(isinstance(task, Task), f"{type(task).__name__} is not a fixable Task")
    _require(isinstance(task.name, str) and bool(task.name), "task.name must be a non-empty str")
    first = task.problems(n, seed=0, split=split)
    again = task.problems(n, seed=0, split=split)
    _require(0 < len(first) <= n, f"problems({n}) returned {len(first)} problems")
    _require(
        [(p.id, p.prompt, p.answer) for p in first] == [(p.id, p.prompt, p.answer) for p in again],
        "problems() is not deterministic in its seed",
    )
    ids = [p.id for p in first]
    _require(len(set(ids)) == len(ids), "problem ids are not unique")
    for p in first:
        _require(isinstance(p, Problem), f"{p!r} is not a Problem")
        _require(p.task == task.name, f"problem {p.id} says task {p.task!r}, not {task.name!r}")
        _require(isinstance(p.prompt, str) and bool(p.prompt), f"problem {p.id} has no prompt")
        _require(task.check(p.answer, p) is True, f"problem {p.id}: its gold answer does not check")
    verdicts = task.verify_many([wrong_completion] * len(first), first)
    _require(len(verdicts) == len(first), "verify_many returned a verdict count unlike its input")
    for p, v in zip(first, verdicts, strict=True):
        _require(not v.correct, f"problem {p.id}: {wrong_completion!r} verified correct")
        single = task.verify(wrong_completion, p)
        _require(
            (single.correct, single.status) == (v.correct, v.status),
            f"problem {p.id}: verify and verify_many disagree ({single.status} vs {v.status})",
        )
    stop = task.stop
    _require(
        isinstance(stop, tuple) and all(isinstance(s, str) for s in stop),
        "task.stop must be a tuple of str",
    )
    return {"task": task.name, "problems": len(first)}
