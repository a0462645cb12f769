"""The ``openai`` backend: sample and score through any OpenAI-compatible HTTP server.

It speaks ``/v1/completions`` (default) or ``/v1/chat/completions`` to vLLM, ``fixable
serve``, llama.cpp, OpenAI itself or anything else with the same wire format. A server
returns only the top-k log-probs of each step, so the per-token entropy is an estimate,
stored with ``entropy_kind="topk"`` (see ``topk_entropy`` for the tail bucket).

Robustness is the point of this module: requests run on a bounded thread pool, each with a
timeout; 429, 5xx, dropped connections, timeouts and malformed JSON are retried with
exponential backoff (honouring ``Retry-After``); a request that still fails is returned as
a ``Generation`` with ``finish_reason="error"`` and the reason in ``error`` — it is never
dropped, and every request that did succeed is returned with it.

Token counts: with ids, their number; without (llama.cpp, OpenAI), the number of log-prob
steps of the choice, else the ``usage`` block's ``completion_tokens`` for a one-choice
response; ``Generation.meta["n_tokens"]`` and ``["n_tokens_source"]`` say which. A server
that returns fewer choices than ``n`` (llama.cpp ignores ``n``) is asked again for the
rest. An empty completion without log-probs is a completion of no tokens.

Token ids: a server returns tokens as strings. With ``extensions=True`` (default) the
backend asks for ``return_tokens_as_token_ids`` (understood by vLLM and ``fixable serve``),
which makes the tokens read ``"token_id:N"``, so ids are exact. Teacher-forced scoring
(``score``) sends ``prompt ids + completion ids`` as a token-list prompt with
``echo=True, logprobs=0, max_tokens=0`` and reads the prompt log-probs back — the
way vLLM and ``fixable serve`` answer; servers that cannot (OpenAI's own) lose the
``score`` capability (pass ``extensions=False``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fixable.backends.base import (
    CHECKPOINT,
    DOLA,
    MIN_P,
    MIX,
    RETRY,
    SCORE,
    TEMPERATURE,
    TOP_P,
    Generation,
    GenerationRequest,
    check_capabilities,
    group_same_calls,
)
from fixable.errors import CapabilityError, ConfigError, UnknownNameError
from fixable.extras import require
from fixable.interventions import Intervention, SamplingSpec
from fixable.registry import backends

logger = logging.getLogger(__name__)

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")


# ---------------------------------------------------------------------------------------
# Top-k estimates, shared with the vllm backend.


def topk_entropy(top_logprobs: Sequence[float], others: Sequence[float] = ()) -> float:
    """Entropy (nats) of a next-token distribution known only through its top-k log-probs.

    ``top_logprobs`` are the k most probable tokens' log-probs; ``others`` those of further
    known tokens outside them (the sampled token, when it is not in the top k). The
    probability no listed token takes, ``m = 1 - sum(p_i)``, is a *tail bucket*. Every tail
    token is at most as probable as the k-th most probable token, ``p_k``, so the tail's
    own entropy is at least ``-m log(min(m, p_k))``. The estimate adds that bound to the
    listed tokens' terms: a lower bound on the full entropy, exact when the list covers
    the whole vocabulary.
    """
    top = [math.exp(lp) for lp in top_logprobs if lp is not None and lp > -math.inf]
    extra = [math.exp(lp) for lp in others if lp is not None and lp > -math.inf]
    probs = top + extra
    if not probs:
        return float("nan")
    listed = -sum(p * math.log(p) for p in probs if p > 0)
    tail = 1.0 - sum(probs)
    if tail <= 1e-6:  # a float32 list sums to 1 only within rounding: no tail to speak of
        return listed
    ceiling = min(top) if top else 1.0  # no top-k list: a tail token is bounded by m only
    return listed - tail * math.log(min(tail, ceiling))


def tempered_logprob(
    sampled_logprob: float,
    top_logprobs: Sequence[float],
    temperature: float,
    others: Sequence[float] = (),
) -> float:
    """log q(y) for ``q ∝ p^(1/T)`` from the T=1 log-prob of ``y`` and the step's top-k list.

    ``top_logprobs`` and ``others`` as in ``topk_entropy`` (the sampled token in one of
    them). The normaliser ``sum_v p_v^(1/T)`` is summed exactly over the listed tokens; the
    tail bucket's mass ``m`` is counted as if spread over tokens as probable as the k-th
    most probable one (``m * p_k^(1/T - 1)``). Exact at T=1; otherwise an estimate, flagged
    as such by the callers (``Generation.meta["logprobs_kind"] = "topk"``).
    """
    if temperature == 1.0:
        return sampled_logprob
    top = [lp for lp in top_logprobs if lp is not None and lp > -math.inf]
    listed = top + [lp for lp in others if lp is not None and lp > -math.inf]
    if not listed:
        return sampled_logprob / temperature
    inv = 1.0 / temperature
    terms = [lp * inv for lp in listed]
    tail = max(0.0, 1.0 - sum(math.exp(lp) for lp in listed))
    if tail > 1e-6:
        level = min(top) if top else math.log(tail)
        terms.append(math.log(tail) + (inv - 1.0) * level)
    peak = max(terms)
    log_normaliser = peak + math.log(sum(math.exp(t - peak) for t in terms))
    return sampled_logprob * inv - log_normaliser


def topk_sampling_logprob(
    sampled_logprob: float,
    top_logprobs: Sequence[float],
    spec: SamplingSpec,
    others: Sequence[float] = (),
) -> float:
    """log q(y) under the distribution ``spec`` samples from (tempered, then cut to
    ``top_p`` and ``min_p`` as ``fixable.distribution`` does), from the T=1 log-prob of
    ``y`` and the step's top-k list (``top_logprobs``, ``others`` as in ``topk_entropy``).

    Temperature as in ``tempered_logprob``. The truncated distribution is the tempered one
    divided by the mass it keeps, summed over the listed tokens from the most probable:
    ``top_p`` keeps them until they hold p, and when the list holds less than p the
    nucleus reaches into the tail, counted as exactly filling p; ``min_p`` keeps the
    listed tokens with q >= min_p x q_top, and the tail only if the least probable listed
    token is kept (tail tokens are no more probable than it). Exact at T=1 when the list
    holds every kept token; otherwise an estimate (``logprobs_kind = "topk"``).
    """
    tempered = tempered_logprob(sampled_logprob, top_logprobs, spec.temperature, others)
    if spec.top_p >= 1 and spec.min_p <= 0:
        return tempered
    finite = [lp for lp in (*top_logprobs, *others) if lp is not None and lp > -math.inf]
    if not finite:
        return tempered
    q = sorted(
        (math.exp(tempered_logprob(lp, top_logprobs, spec.temperature, others)) for lp in finite),
        reverse=True,
    )
    tail = max(0.0, 1.0 - sum(q))
    kept: list[float] = []
    for x in q:
        if sum(kept) >= spec.top_p:
            break
        kept.append(x)
    tail_kept = min(tail, max(0.0, spec.top_p - sum(kept))) if len(kept) == len(q) else 0.0
    if spec.min_p > 0:
        floor = spec.min_p * q[0]
        kept = [x for x in kept if x >= floor]
        if q[-1] < floor:
            tail_kept = 0.0
    return tempered - math.log(sum(kept) + tail_kept)


# ---------------------------------------------------------------------------------------
# One HTTP call with retries.


class RequestFailed(Exception):
    """A request that failed for good (after retries, or at once for a non-retryable error)."""

    def __init__(self, reason: str, attempts: int):
        super().__init__(reason)
        self.reason, self.attempts = reason, attempts


class _Malformed(Exception):
    """A response whose body is not the JSON the API promises (retried like a 5xx)."""


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # retries after the first attempt, for 429/5xx/connection/malformed
    backoff_s: float = 0.5  # first wait; doubles each retry, with ±50 % jitter
    max_backoff_s: float = 30.0  # cap on one wait (also caps a server's Retry-After)

    def __post_init__(self):
        if self.max_retries < 0:
            raise ConfigError(f"max_retries must be >= 0, got {self.max_retries}")
        if self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ConfigError(
                f"backoff_s and max_backoff_s must be >= 0, got {self.backoff_s}, {self.max_backoff_s}"
            )

    def wait_s(self, attempt: int, retry_after: str | None) -> float:
        if retry_after is not None:
            try:
                return min(self.max_backoff_s, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date: fall back to our own schedule
        base = min(self.max_backoff_s, self.backoff_s * (2**attempt))
        # jitter only spreads retries of many threads apart; it never touches sampled content
        return base * (0.5 + random.random())


def post_json(
    client,
    url: str,
    body: dict,
    policy: RetryPolicy,
    check: Callable[[dict], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[dict, int]:
    """POST ``body`` and return (parsed JSON, attempts), retrying transient failures.

    ``check`` validates the parsed body and raises ``_Malformed`` (retried) when a field
    the caller needs is missing. Raises ``RequestFailed`` with the last reason.
    """
    import httpx

    attempt = 0
    while True:
        retry_after = None
        try:
            response = client.post(url, json=body)
        except httpx.TimeoutException as e:
            reason = f"timeout: {type(e).__name__}"
        except httpx.TransportError as e:
            reason = f"connection error: {type(e).__name__}: {e}"
        else:
            status = response.status_code
            if status == 200:
                try:
                    data = response.json()
                    if not isinstance(data, dict):
                        raise _Malformed(f"expected a JSON object, got {type(data).__name__}")
                    if check is not None:
                        check(data)
                    return data, attempt + 1
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    reason = f"malformed JSON in response: {e}"
                except _Malformed as e:
                    reason = f"malformed response: {e}"
            else:
                reason = f"HTTP {status}: {_error_text(response)}"
                if status not in RETRY_STATUS:
                    raise RequestFailed(reason, attempt + 1)
                retry_after = response.headers.get("retry-after")
        if attempt >= policy.max_retries:
            raise RequestFailed(f"{reason} (gave up after {attempt + 1} attempts)", attempt + 1)
        wait = policy.wait_s(attempt, retry_after)
        logger.info("retrying %s in %.2fs after %s", url, wait, reason)
        sleep(wait)
        attempt += 1


def _error_text(response) -> str:
    try:
        data = response.json()
        if isinstance(data, dict):
            err = data.get("error", data.get("detail", data))
            if isinstance(err, dict):
                err = err.get("message", err)
            return str(err)[:300]
    except Exception:
        pass
    return response.text[:300]


# ---------------------------------------------------------------------------------------
# Parsing a choice's log-probs.


@dataclass
class _Step:
    token: str
    logprob: float
    top: list[tuple[str, float]]


def _completion_steps(choice: dict) -> list[_Step]:
    lp = choice.get("logprobs")
    if lp is None and choice.get("text") == "":
        return []  # an empty completion (llama.cpp sends no log-probs for one): no tokens
    if not isinstance(lp, dict):
        raise _Malformed("choice has no logprobs (does the server support `logprobs`?)")
    tokens, token_lps = lp.get("tokens"), lp.get("token_logprobs")
    tops = lp.get("top_logprobs") or [None] * len(tokens or [])
    if (
        not isinstance(tokens, list)
        or not isinstance(token_lps, list)
        or len(tokens) != len(token_lps)
    ):
        raise _Malformed("logprobs.tokens and logprobs.token_logprobs missing or of unequal length")
    steps = []
    for tok, tlp, top in zip(tokens, token_lps, tops, strict=False):
        top_items = list(top.items()) if isinstance(top, dict) else []
        steps.append(
            _Step(str(tok), _as_float(tlp), [(str(t), _as_float(v)) for t, v in top_items])
        )
    return steps


def _chat_steps(choice: dict) -> list[_Step]:
    lp = choice.get("logprobs")
    if lp is None and not (choice.get("message") or {}).get("content"):
        return []  # an empty completion: no tokens
    content = lp.get("content") if isinstance(lp, dict) else None
    if not isinstance(content, list):
        raise _Malformed("choice has no logprobs.content (does the server support `logprobs`?)")
    steps = []
    for item in content:
        if not isinstance(item, dict) or "token" not in item or "logprob" not in item:
            raise _Malformed("logprobs.content item without token/logprob")
        top = [(str(t["token"]), _as_float(t["logprob"])) for t in item.get("top_logprobs") or []]
        steps.append(_Step(str(item["token"]), _as_float(item["logprob"]), top))
    return steps


def _as_float(value: Any) -> float:
    if value is None:
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise _Malformed(f"log-prob {value!r} is not a number") from None


def token_ids_from_strings(tokens: Sequence[str]) -> list[int] | None:
    """Ids from ``"token_id:N"`` strings (``return_tokens_as_token_ids``); None if any is not."""
    ids = []
    for tok in tokens:
        m = _TOKEN_ID.match(tok)
        if m is None:
            return None
        ids.append(int(m.group(1)))
    return ids


# ---------------------------------------------------------------------------------------


@backends.register("openai")
class OpenAIBackend:
    """Sampling and scoring over an OpenAI-compatible server.

    Args:
        model: the served model id of the policy (``GET /v1/models`` lists them).
        base_url: the server's API root, ending in ``/v1``.
        api: ``"completions"`` (raw prompts; supports ``score``) or ``"chat"`` (the server
            applies the model's chat template; no ``score``).
        api_key: sent as a bearer token; default the ``OPENAI_API_KEY`` environment variable.
        reference: served model id of the reference model, for ``score(which="reference")``.
        checkpoints: checkpoint label → served model id, for ``checkpoint(c)``; without it,
            ``c`` is taken as a served model id.
        top_logprobs: alternatives returned per step (the entropy estimate's k; servers cap
            it, OpenAI's completions API at 5, vLLM at its ``max_logprobs``).
        concurrency: requests in flight at once.
        timeout_s: per attempt (connect, read, write and pool each).
        max_retries, backoff_s, max_backoff_s: see ``RetryPolicy``.
        send_seed: pass each rollout's seed as ``seed`` (servers that honour it — vLLM,
            ``fixable serve`` — then sample reproducibly per request).
        extensions: ask for vLLM's ``return_tokens_as_token_ids`` (exact token ids and the
            ``score`` capability). Turn off for servers that reject unknown fields; token
            ids are then left empty.
        samples_per_request: ``n`` of each HTTP request. Consecutive requests with the same
            prompt and limits are grouped, and the group is sampled with the seed of its
            first member, so with n > 1 reproducibility is per group, not per rollout.
        forward_interventions: send ``mix`` and ``dola`` as the ``intervention`` extension
            of ``fixable serve`` (which answers 400 for one its model cannot serve) and
            read the exact sampling log-probs it returns; adds both capabilities.
    """

    name = "openai"
    capabilities = frozenset({RETRY, TEMPERATURE, TOP_P, MIN_P, CHECKPOINT, SCORE})

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "http://127.0.0.1:8000/v1",
        api: str = "completions",
        api_key: str | None = None,
        reference: str | None = None,
        checkpoints: Mapping[str, str] | None = None,
        top_logprobs: int = 5,
        concurrency: int = 8,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        send_seed: bool = True,
        extensions: bool = True,
        samples_per_request: int = 1,
        forward_interventions: bool = False,
    ):
        if api not in ("completions", "chat"):
            raise ConfigError(f"api must be 'completions' or 'chat', got {api!r}")
        if not 0 <= top_logprobs <= 20:
            raise ConfigError(f"top_logprobs must be in [0, 20], got {top_logprobs}")
        if concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {concurrency}")
        if timeout_s <= 0:
            raise ConfigError(f"timeout_s must be > 0, got {timeout_s}")
        if samples_per_request < 1:
            raise ConfigError(f"samples_per_request must be >= 1, got {samples_per_request}")
        require("httpx")  # here, not at the first request: a request's failure is stored as a row
        self._model = model
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.reference = reference
        self.checkpoints = dict(checkpoints or {})
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.policy = RetryPolicy(max_retries, backoff_s, max_backoff_s)
        self.send_seed = send_seed
        self.extensions = extensions
        self.samples_per_request = samples_per_request
        self._api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
        self.forward_interventions = forward_interventions
        caps = {RETRY, TEMPERATURE, TOP_P, CHECKPOINT}  # top_p: a field of the OpenAI API
        if extensions:
            caps.add(MIN_P)  # vLLM's, llama.cpp's and fixable serve's extra field
        if api == "completions" and extensions:
            caps.add(SCORE)
        if forward_interventions:
            caps |= {MIX, DOLA}
        self.capabilities = frozenset(caps)
        self._client = None
        self._client_lock = threading.Lock()
        self._prompt_ids: dict[tuple[str, str], list[int]] = {}

    @property
    def model_name(self) -> str:
        return self._model

    def identity(self) -> dict:
        """What a run's manifest records of this backend (the server's own account of the
        model, from ``GET /v1/models``, where it answers)."""
        served = None
        try:
            response = self._http().get(f"{self.base_url}/models")
            if response.status_code == 200:
                served = [m for m in response.json().get("data", []) if m.get("id") == self._model]
        except Exception as e:  # provenance is best effort; sampling reports real failures
            logger.info("could not list the server's models: %s", e)
        return {
            "base_url": self.base_url,
            "api": self.api,
            "served_model": served[0] if served else None,
            "reference": self.reference,
            "checkpoints": dict(self.checkpoints),
            "top_logprobs": self.top_logprobs,
            "samples_per_request": self.samples_per_request,
            "send_seed": self.send_seed,
            "extensions": self.extensions,
        }

    # -- plumbing ------------------------------------------------------------------------

    def _http(self):
        with self._client_lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
                self._client = httpx.Client(
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(
                        max_connections=self.concurrency, max_keepalive_connections=self.concurrency
                    ),
                    headers=headers,
                )
            return self._client

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _served_model(self, intervention: Intervention) -> str:
        label = intervention.spec.checkpoint
        if label is None:
            return self._model
        if self.checkpoints:
            if label not in self.checkpoints:
                raise UnknownNameError("checkpoint", label, self.checkpoints)
            return self.checkpoints[label]
        return label

    def _temperature(self, intervention: Intervention) -> float:
        return intervention.spec.temperature

    # -- sampling ------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        check_capabilities(self, [intervention])
        model = self._served_model(intervention)
        temperature = self._temperature(intervention)
        groups = group_same_calls(requests, self.samples_per_request)
        results: list[Generation | None] = [None] * len(requests)

        def run(group: list[int]) -> None:
            for index, gen in zip(
                group,
                self._sample_group([requests[i] for i in group], model, temperature, intervention),
                strict=True,
            ):
                results[index] = gen

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai") as pool:
            futures = [pool.submit(run, g) for g in groups]
            for group, future in zip(groups, futures, strict=True):
                try:
                    future.result()
                except Exception as e:  # a bug in parsing must not lose the other requests
                    logger.exception("request group failed unexpectedly")
                    for i in group:
                        if results[i] is None:
                            results[i] = _failed(f"internal error: {type(e).__name__}: {e}", 0, 0.0)
        return [r if r is not None else _failed("no result", 0, 0.0) for r in results]

    def _body(
        self,
        req: GenerationRequest,
        model: str,
        temperature: float,
        n: int,
        intervention: Intervention | None = None,
    ) -> dict:
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": req.max_tokens,
            "n": n,
            "temperature": temperature,
        }
        if self.api == "completions":
            body["prompt"] = req.prompt
            body["logprobs"] = self.top_logprobs
        else:
            body["messages"] = [{"role": "user", "content": req.prompt}]
            body["logprobs"] = True
            body["top_logprobs"] = self.top_logprobs
        if req.stop:
            body["stop"] = list(req.stop)
        if self.send_seed:
            body["seed"] = req.seed
        if self.extensions:
            body["return_tokens_as_token_ids"] = True
            body["return_entropies"] = True  # `fixable serve` answers with full entropies
            body["return_sampling_logprobs"] = True
        if intervention is not None and intervention.kind in (MIX, DOLA):
            body["intervention"] = intervention.label
        spec = intervention.spec if intervention is not None else None
        if spec is not None and spec.top_p < 1:
            body["top_p"] = spec.top_p
        if spec is not None and spec.min_p > 0:
            body["min_p"] = spec.min_p
        return body

    def _sample_group(
        self,
        group: list[GenerationRequest],
        model: str,
        temperature: float,
        intervention: Intervention | None = None,
    ) -> list[Generation]:
        """Sample ``len(group)`` choices; a server that returns fewer than ``n`` (llama.cpp
        ignores ``n``) is asked again for the rest, each next request seeded with the seed of
        the first member it is for."""
        n = len(group)
        url = (
            f"{self.base_url}/{'completions' if self.api == 'completions' else 'chat/completions'}"
        )
        parse = _completion_steps if self.api == "completions" else _chat_steps
        forwarded = (
            intervention.label if intervention and intervention.kind in (MIX, DOLA) else None
        )
        spec = intervention.spec if intervention else SamplingSpec(temperature=temperature)
        out: list[Generation] = []
        attempts_total, requests_made = 0, 0
        start = time.perf_counter()
        while len(out) < n:
            pending = group[len(out) :]
            wanted = len(pending)
            body = self._body(pending[0], model, temperature, wanted, intervention)

            def check(data: dict, wanted: int = wanted) -> None:
                choices = data.get("choices")
                if not isinstance(choices, list) or not 1 <= len(choices) <= wanted:
                    raise _Malformed(
                        f"expected {wanted} choices, got "
                        f"{len(choices) if isinstance(choices, list) else choices!r}"
                    )
                for c in choices:
                    if not isinstance(c, dict):
                        raise _Malformed("a choice is not an object")
                    parse(c)

            try:
                data, attempts = post_json(self._http(), url, body, self.policy, check)
            except RequestFailed as e:
                elapsed = time.perf_counter() - start
                logger.warning("request failed for good: %s", e.reason)
                out += [
                    _failed(e.reason, attempts_total + e.attempts, elapsed / n, seed=r.seed)
                    for r in pending
                ]
                break
            attempts_total += attempts
            requests_made += 1
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            if len(choices) < wanted:
                logger.info(
                    "%s returned %d of %d choices; requesting the other %d",
                    url,
                    len(choices),
                    wanted,
                    wanted - len(choices),
                )
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            for choice, req in zip(choices, pending, strict=False):
                if forwarded is not None and choice.get("intervention") != forwarded:
                    # a server that ignored the extension sampled the plain policy: never
                    # store that under the intervention's name
                    out.append(
                        _failed(
                            f"the server did not confirm intervention {forwarded!r} (only "
                            "`fixable serve` understands it)",
                            attempts_total,
                            0.0,
                            seed=pending[0].seed,
                        )
                    )
                    continue
                gen = self._to_generation(
                    choice,
                    parse(choice),
                    req,
                    spec,
                    attempts_total,
                    0.0,
                    group_seed=pending[0].seed,
                )
                if len(choices) == 1 and not gen.token_ids and "n_tokens" not in gen.meta:
                    completion_tokens = usage.get("completion_tokens")
                    if isinstance(completion_tokens, int) and completion_tokens >= 0:
                        gen.meta["n_tokens"] = completion_tokens
                        gen.meta["n_tokens_source"] = "usage"
                out.append(gen)
        elapsed = time.perf_counter() - start
        for gen in out:
            gen.time_s = elapsed / n
            if requests_made > 1:
                gen.meta["requests"] = requests_made  # the server returned fewer than n
        return out

    def _to_generation(
        self,
        choice: dict,
        steps: list[_Step],
        req: GenerationRequest,
        spec: SamplingSpec,
        attempts: int,
        time_s: float,
        group_seed: int,
    ) -> Generation:
        if self.api == "completions":
            text = choice.get("text") or ""
        else:
            text = (choice.get("message") or {}).get("content") or ""
        ids = token_ids_from_strings([s.token for s in steps]) if self.extensions else None
        policy_lps = [s.logprob for s in steps]
        listed = [_listed(s) for s in steps]
        entropies = [topk_entropy(top, others) for top, others in listed]
        entropy_kind = "topk"
        served = choice.get("entropies")
        if (
            isinstance(served, list)
            and len(served) == len(steps)
            and choice.get("entropy_kind") in ("full", "topk")
        ):
            # the server computed them itself (fixable serve): take its exact values
            entropies = [_as_float(e) for e in served]
            entropy_kind = choice["entropy_kind"]
        sampling = choice.get("sampling_logprobs")
        if isinstance(sampling, list) and len(sampling) == len(steps):
            # the server reports the log-probs of the distribution it sampled from
            logprobs = [_as_float(x) for x in sampling]
            logprobs_kind = "exact"
        else:
            logprobs = [
                topk_sampling_logprob(s.logprob, top, spec, others)
                for s, (top, others) in zip(steps, listed, strict=True)
            ]
            exact = spec.temperature == 1.0 and spec.top_p >= 1 and spec.min_p <= 0
            logprobs_kind = "exact" if exact else "topk"
        server_reason = choice.get("finish_reason")
        error = ""
        if server_reason in ("stop", "eos", None) or server_reason == "length":
            finish = "length" if server_reason == "length" else "stop"
        else:
            finish, error = "error", f"server finish_reason {server_reason!r}"
        meta = {
            "attempts": attempts,
            "server_finish_reason": server_reason,
            "logprobs_kind": logprobs_kind,
            "top_logprobs": self.top_logprobs,
        }
        if self.send_seed:
            meta["seed_sent"] = group_seed
        if not steps and not text:
            meta["n_tokens"] = 0  # an empty completion: zero, whatever the server sends
        elif ids is None:
            meta["token_ids"] = "unavailable: the server returned token strings, not ids"
            if steps:  # each log-prob step is one token
                meta["n_tokens"] = len(steps)
                meta["n_tokens_source"] = "logprob_tokens"
        else:
            meta["n_tokens_source"] = "token_ids"
        return Generation(
            text=text,
            token_ids=ids or [],
            logprobs=logprobs,
            entropies=entropies,
            policy_logprobs=policy_lps,
            entropy_kind=entropy_kind,
            finish_reason=finish,
            error=error,
            time_s=time_s,
            meta=meta,
        )

    # -- scoring -------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, which: str = "policy"
    ) -> list[list[float] | None]:
        """Teacher-forced log-probs through echo. A completion whose scoring request fails
        for good gets ``None`` (stored as "not scored") rather than sinking the batch whose
        samples are already drawn; the failure is logged."""
        if SCORE not in self.capabilities:
            raise CapabilityError(
                "backend 'openai' can score only over the completions API with extensions on "
                "(a server that returns prompt log-probs for echo=True, max_tokens=0, like vLLM "
                "or `fixable serve`)"
            )
        if which == "policy":
            model = self._model
        elif which == "reference":
            if self.reference is None:
                raise CapabilityError("no reference model set: pass reference='SERVED-MODEL-ID'")
            model = self.reference
        else:
            raise ConfigError(f"which must be 'policy' or 'reference', got {which!r}")
        if len(prompts) != len(completions):
            raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions")
        url = f"{self.base_url}/completions"

        def one(i: int) -> list[float]:
            completion = [int(t) for t in completions[i]]
            if not completion:
                return []
            prompt_ids = self._tokenize(prompts[i], model)
            body = {
                "model": model,
                "prompt": prompt_ids + completion,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 0,
                "temperature": 1.0,
                "return_tokens_as_token_ids": True,
            }
            expected = len(prompt_ids) + len(completion)

            def check(data: dict) -> None:
                steps = _echo_steps(data)
                if len(steps) != expected:
                    raise _Malformed(f"echo returned {len(steps)} tokens, expected {expected}")

            data, _ = post_json(self._http(), url, body, self.policy, check)
            return [s.logprob for s in _echo_steps(data)[len(prompt_ids) :]]

        def guarded(i: int) -> list[float] | None:
            try:
                return one(i)
            except RequestFailed as e:
                logger.warning("scoring completion %d failed for good: %s", i, e.reason)
                return None

        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai") as pool:
            return list(pool.map(guarded, range(len(prompts))))

    def _tokenize(self, prompt: str, model: str) -> list[int]:
        """The server's own token ids of ``prompt`` (read back from an echo), cached."""
        key = (model, prompt)
        if key not in self._prompt_ids:
            body = {
                "model": model,
                "prompt": prompt,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 0,
                "return_tokens_as_token_ids": True,
            }

            def check(data: dict) -> None:
                ids = token_ids_from_strings([s.token for s in _echo_steps(data)])
                if ids is None:
                    raise _Malformed("echoed tokens are not 'token_id:N' strings")

            data, _ = post_json(
                self._http(), f"{self.base_url}/completions", body, self.policy, check
            )
            self._prompt_ids[key] = token_ids_from_strings([s.token for s in _echo_steps(data)])
        return self._prompt_ids[key]


def _listed(step: _Step) -> tuple[list[float], list[float]]:
    """(top-k log-probs, [the sampled token's] when it is not among them) of one step."""
    top = dict(step.top)
    return list(top.values()), ([] if step.token in top else [step.logprob])


def _echo_steps(data: dict) -> list[_Step]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise _Malformed("no choices in echo response")
    return _completion_steps(choices[0])


def _failed(reason: str, attempts: int, time_s: float, seed: int | None = None) -> Generation:
    meta: dict[str, Any] = {"attempts": attempts}
    if seed is not None:
        meta["seed_sent"] = seed
    return Generation(
        text="",
        token_ids=[],
        logprobs=[],
        entropies=[],
        policy_logprobs=[],
        entropy_kind="topk",
        finish_reason="error",
        error=reason,
        time_s=time_s,
        meta=meta,
    )
