"""``fixable serve``: an OpenAI-compatible HTTP server over the organism and hf backends.

It answers ``GET /v1/models``, ``POST /v1/completions`` and ``POST /v1/chat/completions``
with the OpenAI wire format, including ``n``, ``logprobs``/``top_logprobs`` and ``echo``.
``echo=True, logprobs=0, max_tokens=0`` returns the teacher-forced log-probs of the prompt
tokens, which is how the ``openai`` backend scores completions; ``prompt`` may be a list of
token ids, as in OpenAI's and vLLM's completions API.

Sampling goes through the backend's own ``generate``, so a request's tokens are the same
as the backend's for the same seed. A request with ``seed`` samples its first choice with
exactly that seed (choice i > 0 with a seed derived from it); without one the server draws
a seed and reports it. Requests that arrive within a few milliseconds of one another are
decoded in one batch (the batch keeps collecting while requests arrive less than the
window apart, up to 20 windows): batch-invariant seeds make that safe, and it is what
makes many concurrent clients cheap.

Extensions (ignored by other clients): ``return_tokens_as_token_ids`` (tokens read
``"token_id:N"``, as in vLLM), ``intervention`` (a label such as ``"mix(alpha=0.5)"``,
served when the backend can), ``return_entropies`` (each choice gets ``entropies``, the
policy's full-vocabulary entropy per generated token) and ``return_sampling_logprobs``
(each choice gets ``sampling_logprobs``: per token, its log-prob under the distribution
actually sampled from — tempered, truncated, mixed or contrasted). ``top_p`` (the OpenAI
field) and ``min_p`` (vLLM's) are served as the ``top_p`` and ``min_p`` interventions; a
request asks for one of temperature, ``top_p``, ``min_p`` or ``intervention``.

Limits (``ServeLimits``, ``fixable serve --max-...``): the request body, prompts × ``n``,
prompt tokens against the model's context, ``max_tokens`` against what the prompt leaves of
it, and token ids against the vocabulary, each refused with a 400 naming the limit and its
value; completions queued or running across all requests, beyond which a request gets a
429 with ``Retry-After``.

Log-probs are the policy's at temperature 1 whatever the sampling temperature, as vLLM's
default ``raw_logprobs`` mode reports them. fastapi and uvicorn are imported only here.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations
# at runtime, and ``Request`` is imported lazily inside ``create_app``.
import asyncio
import contextlib
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from fixable.backends.base import Backend, Generation, GenerationRequest, check_capabilities
from fixable.errors import CapabilityError, ConfigError, FixableError
from fixable.interventions import RETRY, Intervention, parse_intervention
from fixable.types import seed_of

logger = logging.getLogger(__name__)

MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_TOKENS = 16  # the OpenAI completions API's default


@dataclass(frozen=True)
class ServeLimits:
    """What one request, and all requests together, may ask of the server.

    A request over a per-request limit gets a 400 naming the limit and its value; one
    that would take the completions waiting or running past ``max_queued_completions``
    gets a 429 with ``Retry-After``. Validated on construction.
    """

    max_body_bytes: int = 8 << 20  # request body
    max_completions: int = 1024  # prompts × n in one request
    max_queued_completions: int = 4096  # completions admitted and not yet answered, all requests
    # Prompt + completion tokens when the model states no context length of its own
    # (a RoPE organism); a model's own (GPT block_size, hf max_position_embeddings) wins.
    default_context_tokens: int = 8192
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_completions",
            "max_queued_completions",
            "default_context_tokens",
            "retry_after_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"serve limit {name} must be a positive integer, got {value!r}")
        if self.max_queued_completions < self.max_completions:
            raise ConfigError(
                f"serve limit max_queued_completions ({self.max_queued_completions}) must be at "
                f"least max_completions ({self.max_completions}), or no request could run"
            )


def context_length(served: "ServedModel", limits: ServeLimits) -> int:
    """Longest prompt + completion the model takes, in tokens."""
    own = getattr(served.tokens, "context_length", None)
    if isinstance(own, int) and own > 0:
        return own
    model = getattr(served.tokens, "model", None) or getattr(served.backend, "model", None)
    cfg = getattr(model, "cfg", None)  # an organism
    if cfg is not None and getattr(cfg, "family", None) == "gpt":
        return int(cfg.block_size)  # learned positions end there
    config = getattr(model, "config", None)  # a transformers model
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return limits.default_context_tokens


def vocabulary_size(served: "ServedModel") -> int | None:
    """How many token ids the tokenizer knows (ids at or above it cannot be read)."""
    tokenizer = getattr(served.tokens, "tokenizer", None)
    if tokenizer is None:
        return None
    if hasattr(tokenizer, "__len__"):
        return len(tokenizer)
    size = getattr(tokenizer, "vocab_size", None)
    return size if isinstance(size, int) else None


class TokenLevel(Protocol):
    """What the server needs of a model beyond the Backend protocol: its tokenizer and its
    full next-token distributions, teacher-forced."""

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt exactly as the backend's ``generate`` feeds it."""
        ...

    def token_text(self, token_id: int) -> str:
        """The token as a vocabulary string (special tokens by name)."""
        ...

    def decode_ids(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens dropped."""
        ...

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[Any]:
        """For each sequence of length L, a (L-1, V) tensor: log p(x_t | x_<t) for t >= 1, T=1."""
        ...

    def chat_prompt(self, messages: list[dict]) -> str:
        """The model's chat template applied to ``messages``; ConfigError if it has none."""
        ...


@dataclass
class ServedModel:
    """One model the server answers for: its id, its backend and its token-level view."""

    id: str
    backend: Backend
    tokens: TokenLevel


def token_level(backend: Backend) -> TokenLevel:
    """The token-level view of a built-in backend (the hf backend is its own)."""
    if all(hasattr(backend, m) for m in ("encode_prompt", "token_text", "next_token_logprobs")):
        return backend  # type: ignore[return-value]
    if getattr(backend, "name", "") == "organism":
        return OrganismTokens(backend)
    raise ConfigError(
        f"backend {getattr(backend, 'name', backend)!r} cannot be served: "
        "fixable serve serves the organism and hf backends"
    )


class OrganismTokens:
    """Token-level access to an organism backend's policy (CharTokenizer + OrganismLM)."""

    def __init__(self, backend: Backend):
        from fixable.organism.tokenizer import CharTokenizer

        self.backend = backend
        self.tokenizer = getattr(backend, "tokenizer", None) or CharTokenizer()
        self.model = _organism_model(backend)

    def encode_prompt(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text, bos=True)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.itos[token_id]

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, stop_at_eos=False)

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]]) -> list[Any]:
        import torch

        device = _device_of(self.model)
        out: list[Any] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        with torch.inference_mode():
            for start in range(0, len(order), 64):  # left-padded batches of similar lengths
                chunk = order[start : start + 64]
                width = max(len(sequences[i]) for i in chunk)
                idx = torch.zeros(len(chunk), width, dtype=torch.long)
                key_mask = torch.zeros(len(chunk), width, dtype=torch.bool)
                for row, i in enumerate(chunk):
                    n = len(sequences[i])
                    idx[row, width - n :] = torch.tensor(list(sequences[i]), dtype=torch.long)
                    key_mask[row, width - n :] = True
                positions = (key_mask.long().cumsum(-1) - 1).clamp(min=0)
                logits = self.model(
                    idx.to(device), positions=positions.to(device), key_mask=key_mask.to(device)
                )
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                for row, i in enumerate(chunk):
                    n = len(sequences[i])
                    out[i] = logprobs[row, width - n : width - 1]
        return out

    def chat_prompt(self, messages: list[dict]) -> str:
        raise ConfigError("organism models have no chat template: use /v1/completions")


def _organism_model(backend: Backend):
    model = getattr(backend, "model", None)
    if model is not None and hasattr(model, "cfg"):
        return model
    raise ConfigError("the organism backend does not expose its model (expected `.model`)")


def _device_of(model) -> Any:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------
# Micro-batching: requests that arrive together are decoded together.


@dataclass
class _Job:
    requests: list[GenerationRequest]  # one per row
    intervention: Intervention
    sample: bool  # False: nothing to generate (max_tokens=0), rows come back empty
    prefixes: list[list[int]] | None  # per row, prompt ids for the teacher-forced pass
    future: asyncio.Future = field(repr=False)


def _empty_generation() -> Generation:
    return Generation(
        text="", token_ids=[], logprobs=[], entropies=[], policy_logprobs=[], finish_reason="length"
    )


class Batcher:
    """Collects jobs for a few milliseconds, then runs each intervention's rows as one
    ``backend.generate`` call and every row that needs full distributions (top-k
    log-probs, echo) as one teacher-forced pass, all on the model thread."""

    def __init__(
        self,
        backend: Backend,
        tokens: TokenLevel,
        executor: ThreadPoolExecutor,
        window_s: float,
        max_rows: int,
    ):
        self.backend, self.tokens, self.executor = backend, tokens, executor
        self.window_s, self.max_rows = window_s, max_rows
        self.max_wait_s = max(0.05, 20 * window_s)
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def submit(
        self,
        requests: list[GenerationRequest],
        intervention: Intervention,
        *,
        sample: bool = True,
        prefixes: list[list[int]] | None = None,
    ) -> tuple[list[Generation], list[Any]]:
        """(generations, teacher-forced rows) of ``requests``; rows are None where no
        ``prefixes`` were given."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put(_Job(requests, intervention, sample, prefixes, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            # keep collecting while requests keep coming (each gap shorter than the window),
            # up to a cap: a burst of clients then lands in one batch, not in a trickle of
            # tiny ones while the first runs
            cap = loop.time() + self.max_wait_s
            rows = len(jobs[0].requests)
            while rows < self.max_rows:
                timeout = min(self.window_s, cap - loop.time())
                if timeout <= 0:
                    break
                try:
                    job = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                jobs.append(job)
                rows += len(job.requests)
            try:
                await self._run(jobs)
            except Exception as e:  # answer every waiting client rather than hang them
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        generations: dict[int, list[Generation]] = {}
        by_setting: dict[str, list[int]] = {}
        for j, job in enumerate(jobs):
            if job.sample:
                by_setting.setdefault(job.intervention.label, []).append(j)
            else:
                generations[j] = [_empty_generation() for _ in job.requests]
        for members in by_setting.values():
            requests = [r for j in members for r in jobs[j].requests]
            results = await loop.run_in_executor(
                self.executor, self.backend.generate, requests, jobs[members[0]].intervention
            )
            start = 0
            for j in members:
                n = len(jobs[j].requests)
                generations[j] = results[start : start + n]
                start += n
        # one teacher-forced pass over every row that asked for full distributions
        wanted = [
            (j, k)
            for j, job in enumerate(jobs)
            if job.prefixes is not None
            for k in range(len(job.requests))
        ]
        rows: dict[tuple[int, int], Any] = {}
        if wanted:
            sequences = [jobs[j].prefixes[k] + list(generations[j][k].token_ids) for j, k in wanted]
            full = await loop.run_in_executor(
                self.executor, self.tokens.next_token_logprobs, sequences
            )
            rows = dict(zip(wanted, full, strict=True))
        for j, job in enumerate(jobs):
            if not job.future.done():
                job.future.set_result(
                    (generations[j], [rows.get((j, k)) for k in range(len(job.requests))])
                )


# ---------------------------------------------------------------------------------------
# The app.


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status


def choice_seed(seed: int, index: int) -> int:
    """Seed of choice ``index`` of a request with ``seed``: the seed itself for choice 0."""
    if index == 0:
        return seed
    return seed_of(seed, "choice", index)


def create_app(
    models: Sequence[ServedModel],
    *,
    batch_window_ms: float = 5.0,
    max_batch_rows: int = 1024,
    limits: ServeLimits | None = None,
):
    """The FastAPI app serving ``models`` (the first one answers requests without ``model``)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    if not models:
        raise ConfigError("serve needs at least one model")
    limits = limits or ServeLimits()
    queued = {"completions": 0}  # admitted and not yet answered (one event loop: no lock)
    by_id = {m.id: m for m in models}
    # one model thread: torch kernels already use the cores, and the models are not
    # guaranteed thread-safe; batching across clients is what buys throughput
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fixable-model")
    batchers: dict[str, Batcher] = {}

    async def lifespan(app):
        for m in models:
            batchers[m.id] = Batcher(
                m.backend, m.tokens, executor, batch_window_ms / 1000, max_batch_rows
            )
            batchers[m.id].start()
        yield
        for b in batchers.values():
            await b.stop()
        executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="fixable serve", lifespan=lifespan)

    def error(message: str, status: int = 400, param: str | None = None, headers=None):
        kind = "invalid_request_error" if status < 500 else "server_error"
        if status == 429:
            kind = "rate_limit_error"
        return JSONResponse(
            status_code=status,
            content={"error": {"message": message, "type": kind, "param": param, "code": None}},
            headers=headers,
        )

    async def read_body(request: Request) -> bytes:
        """The body, refused as soon as it passes ``max_body_bytes`` (never read whole)."""
        cap = limits.max_body_bytes
        too_big = _BadRequest(f"request body exceeds the limit max_body_bytes={cap}", "body", 400)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            raise too_big
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/v1/models")
    async def list_models():
        return {
            "object": "list",
            "data": [
                {
                    "id": m.id,
                    "object": "model",
                    "created": 0,
                    "owned_by": "fixable",
                    "backend": m.backend.name,
                    "capabilities": sorted(m.backend.capabilities),
                }
                for m in models
            ],
        }

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    def admit(completions: int) -> None:
        """Count a request's completions in (out, when negative), or refuse it with a 429
        when the queue is full."""
        if completions > 0 and queued["completions"] + completions > limits.max_queued_completions:
            raise _BadRequest(
                f"the server is busy: {queued['completions']} completions are queued or "
                f"running and the limit is max_queued_completions="
                f"{limits.max_queued_completions}; retry after {limits.retry_after_s} s",
                None,
                429,
            )
        queued["completions"] += completions

    async def handle(request: Request, chat: bool):
        import json

        try:
            raw = await read_body(request)
        except _BadRequest as e:
            return error(e.message, e.status, e.param)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            return error("request body is not valid JSON")
        if not isinstance(body, dict):
            return error("request body must be a JSON object")
        try:
            served = _pick_model(body, by_id, models[0])
            response = await _complete(body, served, batchers[served.id], chat, limits, admit)
        except _BadRequest as e:
            headers = {"Retry-After": str(limits.retry_after_s)} if e.status == 429 else None
            return error(e.message, e.status, e.param, headers)
        except FixableError as e:
            return error(str(e))
        return response

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await handle(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await handle(request, chat=True)

    return app


def _pick_model(body: dict, by_id: dict[str, ServedModel], default: ServedModel) -> ServedModel:
    name = body.get("model")
    if name is None:
        return default
    if name not in by_id:
        raise _BadRequest(
            f"model {name!r} is not served here; served: {', '.join(by_id)}", "model", 404
        )
    return by_id[name]


@dataclass
class _Params:
    max_tokens: int
    temperature: float
    n: int
    top_logprobs: int | None  # None: no log-probs; 0: only the chosen token's
    echo: bool
    stop: tuple[str, ...]
    seed: int
    seed_given: bool
    token_ids: bool
    entropies: bool
    sampling_logprobs: bool
    intervention: Intervention


def _int(body: dict, key: str, default, low: int, high: int) -> int:
    value = body.get(key, default)
    if value is None:
        value = default
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(f"{key} must be an integer, got {value!r}", key)
    if not low <= value <= high:
        raise _BadRequest(f"{key} must be in [{low}, {high}], got {value}", key)
    return value


def _params(body: dict, chat: bool) -> _Params:
    if body.get("stream"):
        raise _BadRequest("stream=true is not supported by fixable serve", "stream")
    for key, neutral in (("frequency_penalty", 0.0), ("presence_penalty", 0.0)):
        if body.get(key, neutral) not in (neutral, None):
            raise _BadRequest(f"{key} is not supported (only {neutral}), got {body[key]!r}", key)
    if body.get("best_of", 1) not in (1, None) and body.get("best_of") != body.get("n", 1):
        raise _BadRequest("best_of is not supported", "best_of")
    max_key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    max_tokens = _int(body, max_key, DEFAULT_MAX_TOKENS, 0, 1 << 20)
    n = _int(body, "n", 1, 1, 1024)
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise _BadRequest(f"temperature must be a number, got {temperature!r}", "temperature")
    temperature = float(temperature)
    if chat:
        top = _int(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS) if body.get("logprobs") else None
        echo = False
    else:
        top = (
            None if body.get("logprobs") is None else _int(body, "logprobs", 0, 0, MAX_TOP_LOGPROBS)
        )
        echo = bool(body.get("echo", False))
    stop = body.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
        raise _BadRequest("stop must be a string or a list of non-empty strings", "stop")
    seed = body.get("seed")
    seed_given = seed is not None
    if seed_given:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise _BadRequest(f"seed must be an integer in [0, 2**63), got {seed!r}", "seed")
    else:
        seed = secrets.randbits(63)
    truncation = {}
    for key, neutral in (("top_p", 1.0), ("min_p", 0.0)):
        value = body.get(key)
        if value is None or (not isinstance(value, bool) and value == neutral):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _BadRequest(f"{key} must be a number, got {value!r}", key)
        truncation[key] = float(value)
    intervention = _intervention(body.get("intervention"), temperature, truncation)
    return _Params(
        max_tokens,
        temperature,
        n,
        top,
        echo,
        tuple(stop),
        seed,
        seed_given,
        bool(body.get("return_tokens_as_token_ids", False)),
        bool(body.get("return_entropies", False)),
        bool(body.get("return_sampling_logprobs", False)),
        intervention,
    )


def _intervention(label: Any, temperature: float, truncation: dict[str, float]) -> Intervention:
    """The one intervention a request asks for: an ``intervention`` label, a temperature,
    or a ``top_p`` / ``min_p`` truncation (each kind's own label; combinations are not
    served, as every setting is one intervention)."""
    asked = ["intervention"] if label is not None else []
    asked += ["temperature"] if temperature != 1.0 else []
    asked += list(truncation)
    if len(asked) > 1:
        raise _BadRequest(
            f"give one of temperature, top_p, min_p or intervention, got {', '.join(asked)}",
            asked[1],
        )
    if truncation:
        ((kind, value),) = truncation.items()
        try:
            return Intervention(kind, value)
        except FixableError as e:
            raise _BadRequest(str(e), kind) from None
    if label is not None:
        if not isinstance(label, str):
            raise _BadRequest(f"intervention must be a label string, got {label!r}", "intervention")
        try:
            return parse_intervention(label)
        except FixableError as e:
            raise _BadRequest(str(e), "intervention") from None
    if temperature == 1.0:
        return RETRY
    try:
        return Intervention("temperature", temperature)
    except FixableError as e:
        raise _BadRequest(f"{e} (greedy decoding is not served)", "temperature") from None


def _prompts(
    body: dict, served: ServedModel, chat: bool, limits: ServeLimits | None = None
) -> list[tuple[str, list[int]]]:
    """(text, token ids) of every prompt in the request, each within the model's context."""
    limits = limits or ServeLimits()
    tokens = served.tokens
    context = context_length(served, limits)
    vocabulary = vocabulary_size(served)
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("messages must be a non-empty list", "messages")
        if any(
            len(str(m.get("content", "")) if isinstance(m, dict) else str(m)) > 8 * context
            for m in messages
        ):
            raise _context_error(f"more than {8 * context} bytes", context)
        text = tokens.chat_prompt(messages)
        ids = tokens.encode_prompt(text)
        if len(ids) >= context:
            raise _context_error(f"{len(ids)} tokens", context)
        return [(text, ids)]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        prompts: list = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt:
        prompts = prompt
    else:
        raise _BadRequest(
            "prompt must be a string, a list of strings, a list of token ids or "
            "a list of token-id lists",
            "prompt",
        )
    n = body.get("n", 1)
    n = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    if len(prompts) * n > limits.max_completions:  # before any prompt is tokenized
        raise _BadRequest(
            f"{len(prompts)} prompts × n={n} = {len(prompts) * n} completions exceed the "
            f"limit max_completions={limits.max_completions} per request",
            "n" if len(prompts) == 1 else "prompt",
        )
    out = []
    for p in prompts:
        if isinstance(p, str):
            # no tokenizer we serve packs more than 8 bytes into a token on average: a
            # longer prompt cannot fit, and is refused before tokenizing a huge string
            if len(p.encode("utf-8", "surrogatepass")) > 8 * context:
                raise _context_error(f"more than {8 * context} bytes", context)
            ids = tokens.encode_prompt(p)
            if len(ids) >= context:
                raise _context_error(f"{len(ids)} tokens", context)
            out.append((p, ids))
        elif isinstance(p, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
            if len(p) >= context:
                raise _context_error(f"{len(p)} tokens", context)
            bad = [t for t in p if t < 0 or (vocabulary is not None and t >= vocabulary)]
            if bad:
                raise _BadRequest(
                    f"token id {bad[0]} is outside the vocabulary: ids must be in "
                    f"[0, {vocabulary}) (the tokenizer's vocabulary size)",
                    "prompt",
                )
            out.append((_ids_text(tokens, p), list(p)))
        else:
            raise _BadRequest(f"cannot read prompt {p!r}", "prompt")
    return out


def _context_error(size: str, context: int) -> _BadRequest:
    return _BadRequest(
        f"the prompt is {size}; the model's context is {context} tokens (limit "
        "context_length), and the completion needs at least one of them",
        "prompt",
    )


def _ids_text(tokens: TokenLevel, ids: list[int]) -> str:
    """The text whose encoding is ``ids`` (a token-id prompt must round-trip to be sampled)."""
    return tokens.decode_ids(ids)


async def _complete(
    body: dict,
    served: ServedModel,
    batcher: Batcher,
    chat: bool,
    limits: ServeLimits | None = None,
    admit=None,
):
    limits = limits or ServeLimits()
    params = _params(body, chat)
    prompts = _prompts(body, served, chat, limits)
    context = context_length(served, limits)
    for _, ids in prompts:
        if len(ids) + params.max_tokens > context:
            raise _BadRequest(
                f"max_tokens={params.max_tokens} exceeds what remains of the model's context: "
                f"{context} (limit context_length) - {len(ids)} prompt tokens = "
                f"{context - len(ids)}",
                "max_tokens",
            )
    if len(prompts) * params.n > limits.max_completions:
        raise _BadRequest(
            f"{len(prompts)} prompts × n={params.n} = {len(prompts) * params.n} completions "
            f"exceed the limit max_completions={limits.max_completions} per request",
            "n",
        )
    completions = len(prompts) * params.n
    if admit is None:
        return await _answer(body, served, batcher, chat, params, prompts)
    admit(completions)  # raises a 429 when the queue is full
    try:
        return await _answer(body, served, batcher, chat, params, prompts)
    finally:
        admit(-completions)  # a release always fits


async def _answer(body, served, batcher, chat, params, prompts):
    backend = served.backend
    try:
        check_capabilities(backend, [params.intervention])
    except CapabilityError as e:
        raise _BadRequest(str(e), "intervention") from None
    created = int(time.time())
    requests: list[GenerationRequest] = []
    for text, ids in prompts:
        if params.max_tokens > 0 and served.tokens.encode_prompt(text) != ids:
            raise _BadRequest(
                "this token-id prompt does not round-trip through the tokenizer, "
                "so it cannot be sampled; send it as text",
                "prompt",
            )
        for i in range(params.n):
            requests.append(
                GenerationRequest(
                    prompt=text,
                    seed=choice_seed(params.seed, i),
                    max_tokens=params.max_tokens,
                    stop=params.stop,
                )
            )
    # teacher-forced distributions, only where the answer needs alternatives or echo
    need_full = params.top_logprobs is not None and (params.top_logprobs > 0 or params.echo)
    prefixes = [prompts[k // params.n][1] for k in range(len(requests))] if need_full else None
    generations, full = await batcher.submit(
        requests, params.intervention, sample=params.max_tokens > 0, prefixes=prefixes
    )
    choices = []
    completion_tokens = 0
    for k, gen in enumerate(generations):
        text, prompt_ids = prompts[k // params.n]
        index = k
        completion_tokens += len(gen.token_ids)
        choice = _choice(index, text, prompt_ids, gen, full[k], params, served.tokens, chat)
        choices.append(choice)
    prompt_tokens = sum(len(ids) for _, ids in prompts)
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion" if chat else "text_completion",
        "created": created,
        "model": served.id,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": f"fixable-seed-{params.seed}",
        "seed": params.seed,
    }


def _choice(
    index: int,
    prompt_text: str,
    prompt_ids: list[int],
    gen: Generation,
    full,
    params: _Params,
    tokens: TokenLevel,
    chat: bool,
) -> dict:
    finish = gen.finish_reason
    choice: dict[str, Any] = {
        "index": index,
        "finish_reason": finish if finish != "error" else "abort",
    }
    if finish == "error":
        choice["error"] = gen.error
    token_str = (lambda t: f"token_id:{t}") if params.token_ids else tokens.token_text
    gen_ids = list(gen.token_ids)
    # log-probs of generated tokens: exact from decoding, or from the teacher-forced pass
    logprobs = None
    top_lists = None
    if params.top_logprobs is not None:
        n_prompt = len(prompt_ids)
        if full is not None:
            gen_rows = full[n_prompt - 1 : n_prompt - 1 + len(gen_ids)]
            logprobs = _picked(gen_rows, gen_ids)
            if params.top_logprobs > 0:
                top_lists = _top(gen_rows, params.top_logprobs, token_str)
        else:
            logprobs = [float(x) for x in (gen.policy_logprobs or [])]
    if chat:
        choice["message"] = {"role": "assistant", "content": gen.text}
        if logprobs is not None:
            content = []
            for t, tok in enumerate(gen_ids):
                item = {
                    "token": token_str(tok),
                    "logprob": logprobs[t],
                    "bytes": None,
                    "top_logprobs": [
                        {"token": s, "logprob": v, "bytes": None}
                        for s, v in (top_lists[t] if top_lists else [])
                    ],
                }
                content.append(item)
            choice["logprobs"] = {"content": content}
        else:
            choice["logprobs"] = None
    else:
        text = (prompt_text + gen.text) if params.echo else gen.text
        choice["text"] = text
        if logprobs is not None:
            out_tokens = [token_str(t) for t in gen_ids]
            token_lps: list[float | None] = list(logprobs)
            tops: list[dict | None] = (
                [dict(t) for t in top_lists] if top_lists else [None] * len(gen_ids)
            )
            if params.echo:
                # rows 0..n_prompt-2 of the teacher-forced pass predict prompt tokens 1..
                prompt_rows = full[: len(prompt_ids) - 1]
                echo_lps: list[float | None] = [None, *_picked(prompt_rows, prompt_ids[1:])]
                echo_tops: list[dict | None] = [None] + (
                    [dict(t) for t in _top(prompt_rows, params.top_logprobs, token_str)]
                    if params.top_logprobs
                    else [None] * (len(prompt_ids) - 1)
                )
                out_tokens = [token_str(t) for t in prompt_ids] + out_tokens
                token_lps = echo_lps + token_lps
                tops = echo_tops + tops
            choice["logprobs"] = {
                "tokens": out_tokens,
                "token_logprobs": token_lps,
                "top_logprobs": tops if params.top_logprobs else None,
                "text_offset": _offsets(
                    [
                        tokens.decode_ids([t])
                        for t in (prompt_ids + gen_ids if params.echo else gen_ids)
                    ]
                ),
            }
        else:
            choice["logprobs"] = None
    if params.entropies:
        choice["entropies"] = [float(e) for e in gen.entropies]
        choice["entropy_kind"] = gen.entropy_kind
    if params.sampling_logprobs:
        choice["sampling_logprobs"] = [float(x) for x in gen.logprobs]
    choice["intervention"] = params.intervention.label  # lets a client check it was honoured
    if gen.meta.get("seed") is not None or params.seed_given:
        choice["seed"] = choice_seed(params.seed, index % params.n)
    return choice


def _picked(rows, ids: Sequence[int]) -> list[float]:
    """rows[t, ids[t]] for every t, in one gather."""
    import torch

    if len(ids) == 0:
        return []
    index = torch.tensor(list(ids), dtype=torch.long)[:, None]
    return rows[: len(ids)].gather(-1, index)[:, 0].tolist()


def _top(rows, k: int, token_str) -> list[list[tuple[str, float]]]:
    """The k most probable tokens of every row, in one topk call."""
    import torch

    if rows.shape[0] == 0:
        return []
    values, ids = torch.topk(rows, min(k, rows.shape[-1]), dim=-1)
    return [
        [(token_str(i), v) for v, i in zip(vs, is_, strict=True)]
        for vs, is_ in zip(values.tolist(), ids.tolist(), strict=True)
    ]


def _offsets(pieces: list[str]) -> list[int]:
    offsets, at = [], 0
    for p in pieces:
        offsets.append(at)
        at += len(p)
    return offsets


# ---------------------------------------------------------------------------------------


def build_models(
    names: Sequence[str], *, backend: str = "organism", **backend_options
) -> list[ServedModel]:
    """Create the backends for ``names`` (zoo names, checkpoint or model directories)."""
    from fixable.registry import backends

    served = []
    for name in names:
        b = backends.create(backend, name, **backend_options)
        served.append(ServedModel(id=name, backend=b, tokens=token_level(b)))
    return served


class BackgroundServer:
    """Run the app on 127.0.0.1 (an ephemeral port) in a thread: for tests, benchmarks and
    notebooks. ``with BackgroundServer(models) as url: ...`` gives the ``/v1`` root."""

    def __init__(
        self,
        models: Sequence[ServedModel],
        *,
        batch_window_ms: float = 5.0,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ServeLimits | None = None,
    ):
        self.models, self.batch_window_ms, self.limits = models, batch_window_ms, limits
        self.host, self.port = host, port
        self._server = None
        self._thread = None

    def __enter__(self) -> str:
        import socket
        import threading

        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        port = sock.getsockname()[1]
        app = create_app(self.models, batch_window_ms=self.batch_window_ms, limits=self.limits)
        config = uvicorn.Config(app, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name="fixable-serve"
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise FixableError("fixable serve did not start")
            time.sleep(0.01)
        self._sock = sock
        return f"http://{self.host}:{port}/v1"

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._sock.close()


def serve(
    names: Sequence[str],
    *,
    backend: str = "organism",
    host: str = "127.0.0.1",
    port: int = 8000,
    batch_window_ms: float = 5.0,
    log_level: str = "warning",
    limits: ServeLimits | None = None,
    **backend_options,
) -> None:
    """Build the models and run the server until interrupted."""
    import uvicorn

    models = build_models(names, backend=backend, **backend_options)
    app = create_app(models, batch_window_ms=batch_window_ms, limits=limits)
    logger.info("serving %s on http://%s:%d/v1", ", ".join(m.id for m in models), host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
