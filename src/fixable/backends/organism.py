"""The ``organism`` backend: the built-in zoo models, sampled by ``fixable.organism.decode``.

``OrganismBackend("llama-rl-s0")`` loads a zoo model (or any checkpoint directory written
by ``save_checkpoint``) and, with ``reference="auto"``, the base model of its family for
``mix`` and for reference scoring. Every intervention resolves into a ``SamplingSpec``,
handed whole to one ``decode`` call:

====================  ==========================================================
distribution-only     ``retry``, ``temperature(T)``, ``top_p(p)``, ``min_p(p)`` and
kinds                 every other kind declared ``distribution_only``: the arithmetic
                      of ``fixable.distribution``, with no code here
``mix(alpha)``        ``p ∝ p_policy^(1-alpha) p_reference^alpha``, token by token
                      (the backend hands ``decode`` the reference model)
``checkpoint(c)``     the checkpoint ``c`` of the model's run (a label from
                      ``zoo.checkpoints(model)``, e.g. ``step-200``, ``first`` or
                      ``last``, or a directory), loaded by the backend
``dola(layer)``       contrast with the early exit after ``layer`` blocks
====================  ==========================================================

On CPU a rollout's tokens are a pure function of its seed (``seeded``): the engine's
results do not depend on batching. On a GPU the backend does not promise that (see
docs/engine.md). Entropies are over the whole vocabulary (``full_entropy``).

``dtype`` chooses the precision of the engine's linear layers: ``"float32"`` (the
default), ``"bfloat16"`` (weights and their inputs in bf16; everything else fp32) or
``"auto"`` (bf16 where the CPU multiplies bf16 in hardware). bf16 changes the rollouts, so
the manifest records it and a run refuses to be resumed in another precision; see
docs/engine.md for what it changes and why fp32 stays the default.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

from fixable.backends.base import (
    CHECKPOINT,
    DOLA,
    FULL_ENTROPY,
    MIX,
    SCORE,
    SEEDED,
    DistributionCapabilities,
    Generation,
    GenerationRequest,
    check_capabilities,
)
from fixable.errors import CapabilityError, ConfigError, UnknownNameError
from fixable.interventions import SYMBOLIC_CHECKPOINTS, Intervention, resolve_checkpoint
from fixable.registry import backends

log = logging.getLogger(__name__)


@backends.register("organism")
class OrganismBackend:
    """Sampling and teacher-forced scoring of organism models, under every intervention.

    Args:
        model: a zoo name (``llama-rl-s0``, ``name@step-N``) or a checkpoint directory.
        reference: the reference model for ``mix`` and reference scoring: ``"auto"`` (the
            zoo base of the model's family, when the model is a zoo model and its base
            is built), a zoo name or directory, or None for no reference.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (cuda when available).
        batch_size: rows (prompts × samples) decoded together; bounds the KV cache memory.
        max_tokens: the most tokens any completion may have (a request asking for more is
            cut to this); None leaves each request's own ``max_tokens``.
        zoo_dir: the zoo to resolve names in (default: the zoo shipped in the package).
        dtype: ``"float32"``, ``"bfloat16"`` or ``"auto"`` (bfloat16 where the CPU has
            bf16 matrix instructions, else float32): the linear layers' precision.
    """

    name = "organism"
    # retry, temperature, top_p, min_p and every other distribution-only kind, plus these
    capabilities = DistributionCapabilities(MIX, CHECKPOINT, DOLA, SCORE, FULL_ENTROPY, SEEDED)

    @staticmethod
    def check_model(model: str | Path, zoo_dir: str | Path | None = None, **_options) -> None:
        """Raise the one-line error loading ``model`` would give, without loading it."""
        from fixable.organism import zoo

        zoo.resolve(model, zoo_dir=None if zoo_dir is None else Path(zoo_dir))

    def __init__(
        self,
        model: str | Path,
        *,
        reference: str | Path | None = "auto",
        device: str = "cpu",
        batch_size: int = 512,
        max_tokens: int | None = None,
        zoo_dir: str | Path | None = None,
        dtype: str = "float32",
    ):
        from fixable.organism import zoo
        from fixable.organism.tokenizer import CharTokenizer

        if int(batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
        if max_tokens is not None and int(max_tokens) < 1:
            raise ConfigError(f"max_tokens must be >= 1 (or None for no cap), got {max_tokens!r}")
        self.batch_size = int(batch_size)
        self.dtype = _resolve_dtype(dtype)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.zoo_dir = None if zoo_dir is None else Path(zoo_dir)
        self.device = _resolve_device(device)
        self.tokenizer = CharTokenizer()
        self.source = str(model)
        self.model, self.meta = zoo.load(self.source, device=self.device, zoo_dir=self.zoo_dir)
        self.path = Path(self.meta["path"])
        if self.model.cfg.vocab_size != self.tokenizer.vocab_size:
            raise ConfigError(
                f"{self.source!r} has a vocabulary of {self.model.cfg.vocab_size}, the organism "
                f"tokenizer {self.tokenizer.vocab_size}: not an organism model"
            )
        self.reference_source = self._reference_source(reference)
        self.reference = None
        if self.reference_source is not None:
            self.reference, _ = zoo.load(
                self.reference_source, device=self.device, zoo_dir=self.zoo_dir
            )
            if self.reference.cfg.vocab_size != self.model.cfg.vocab_size:
                raise ConfigError(
                    f"reference {self.reference_source!r} has another vocabulary than "
                    f"{self.source!r}: mixing needs the same tokenizer"
                )
        if self.reference is None:
            self.capabilities = self.capabilities - {MIX}
        if self.device != "cpu":
            # batch invariance is pinned and tested on CPU kernels only; cuBLAS picks its
            # kernels by shape, so on a GPU a near-tie may resolve differently in another batch
            self.capabilities = self.capabilities - {SEEDED}
        self._checkpoint: tuple[str, object] | None = None  # (directory, model): one resident

    def _reference_source(self, reference) -> str | None:
        from fixable.organism import zoo

        if reference is None:
            return None
        if str(reference) != "auto":
            return str(reference)
        try:
            base = zoo.reference_of(self.source)
        except UnknownNameError:  # a checkpoint directory, not a zoo name
            log.info("%s is not a zoo model: no reference unless one is given", self.source)
            return None
        if base is None:
            return None
        if base not in zoo.list_models(include_micro=True, zoo_dir=self.zoo_dir):
            log.warning("reference %s of %s is not built: mix is unavailable", base, self.source)
            return None
        return base

    # -- identity --------------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.source

    def identity(self) -> dict:
        """What a run's manifest records to reproduce this backend's samples."""
        from fixable.organism import decode as engine

        reference_path = None
        if self.reference_source is not None:
            reference_path = str(self._resolve(self.reference_source).resolve())
        return {
            "policy_path": str(self.path.resolve()),
            "reference": self.reference_source,
            "reference_path": reference_path,
            "checkpoints": {k: str(v) for k, v in self.checkpoints().items()},
            "device": self.device,
            "dtype": self.dtype,
            "max_tokens_cap": self.max_tokens,
            "engine": {
                "min_rows": engine.MIN_ROWS,
                "prompt_bucket": engine.PROMPT_BUCKET,
                "dola_plausibility": engine.DOLA_PLAUSIBILITY,
            },
        }

    def _resolve(self, name: str) -> Path:
        from fixable.organism import zoo

        return zoo.resolve(name, zoo_dir=self.zoo_dir)

    def checkpoints(self) -> dict[str, Path]:
        """Labels of the earlier checkpoints ``checkpoint(c)`` can sample, → directory."""
        from fixable.organism import zoo

        return zoo.checkpoints(str(self.path), zoo_dir=self.zoo_dir)

    # -- sampling --------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        from fixable.organism.decode import decode

        check_capabilities(self, [intervention])
        spec = intervention.spec
        policy = self.model
        if spec.checkpoint in SYMBOLIC_CHECKPOINTS:  # the earliest / latest of the model's run
            spec = resolve_checkpoint(
                intervention, list(self.checkpoints()), model=self.source
            ).spec
        if spec.checkpoint is not None:
            policy = self._checkpoint_model(spec.checkpoint)
        n_layer = policy.cfg.n_layer
        if spec.dola_layer is not None and not 0 <= spec.dola_layer < n_layer:
            raise ConfigError(
                f"dola layer must be in [0, {n_layer - 1}] for {self.source!r} "
                f"({n_layer} layers), got {spec.dola_layer}"
            )

        results: list[Generation | None] = [None] * len(requests)
        prompts: dict[int, list[int]] = {}
        for i, request in enumerate(requests):
            try:
                prompts[i] = self.tokenizer.encode(request.prompt, bos=True)
            except ValueError as e:  # a character the organism cannot read: this row fails
                results[i] = Generation(
                    text="",
                    token_ids=[],
                    logprobs=[],
                    entropies=[],
                    finish_reason="error",
                    error=str(e),
                    meta={"seed": request.seed},
                )
        # one decode call per token limit (rows are batch-invariant, so grouping is free)
        groups: dict[int, list[int]] = {}
        for i in prompts:
            groups.setdefault(self._limit(requests[i]), []).append(i)
        for limit, rows in sorted(groups.items()):
            t0 = time.perf_counter()
            decoded = decode(
                policy,
                [prompts[i] for i in rows],
                [requests[i].seed for i in rows],
                spec,  # whole: the engine reads it through fixable.distribution
                max_new_tokens=limit,
                eos_id=self.tokenizer.eos_id,
                reference=self.reference if spec.alpha > 0 else None,
                batch_size=self.batch_size,
                dtype=self.dtype,
            )
            share = (time.perf_counter() - t0) / len(rows)
            for k, i in enumerate(rows):
                results[i] = self._generation(decoded, k, requests[i], share)
        return results  # type: ignore[return-value]

    def _limit(self, request: GenerationRequest) -> int:
        limit = int(request.max_tokens)
        if limit < 0:
            raise ConfigError(f"max_tokens must be >= 0, got {limit}")
        return limit if self.max_tokens is None else min(limit, self.max_tokens)

    def _generation(self, decoded, k: int, request: GenerationRequest, time_s: float) -> Generation:
        tokens = decoded.token_ids[k]
        n, finish = len(tokens), decoded.finish_reasons[k]
        text = self.tokenizer.decode(tokens)
        cut = _stop_cut(tokens, request.stop, self.tokenizer)
        if cut is not None:  # keep the tokens up to the one that completed the stop string
            n, text, finish = cut[0], cut[1], "stop"
        return Generation(
            text=text,
            token_ids=tokens[:n],
            logprobs=decoded.logprobs[k][:n],
            entropies=decoded.entropies[k][:n],
            policy_logprobs=decoded.policy_logprobs[k][:n],
            entropy_kind="full",
            finish_reason=finish,
            time_s=time_s,
            meta={"seed": request.seed},
        )

    def _checkpoint_model(self, label: str):
        from fixable.organism import zoo

        available = self.checkpoints()
        if label in available:
            directory = available[label]
        elif (Path(label) / "config.json").exists():
            directory = Path(label)
        else:
            raise UnknownNameError(f"checkpoint of {self.source}", label, available)
        # keep one checkpoint resident: a sweep visits them one at a time
        if self._checkpoint is None or self._checkpoint[0] != str(directory):
            model, _ = zoo.load(str(directory), device=self.device, zoo_dir=self.zoo_dir)
            if model.cfg.vocab_size != self.model.cfg.vocab_size:
                raise ConfigError(
                    f"checkpoint {label!r} has another vocabulary than {self.source!r}"
                )
            self._checkpoint = (str(directory), model)
        return self._checkpoint[1]

    # -- scoring ---------------------------------------------------------------------------

    def score(
        self, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, which: str = "policy"
    ) -> list[list[float]]:
        """Teacher-forced log-probs of each completion's tokens under the policy or the
        reference (``which``), one list per completion."""
        from fixable.organism.decode import teacher_forced_logprobs

        if which == "policy":
            model = self.model
        elif which == "reference":
            if self.reference is None:
                raise CapabilityError(
                    f"{self.source!r} has no reference model to score under: pass "
                    "reference=NAME (a zoo name or checkpoint directory) to the organism backend"
                )
            model = self.reference
        else:
            raise ConfigError(f"which must be 'policy' or 'reference', got {which!r}")
        if len(prompts) != len(completions):
            raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions")
        try:
            prompt_ids = [self.tokenizer.encode(p, bos=True) for p in prompts]
            return teacher_forced_logprobs(
                model, prompt_ids, completions, batch_size=self.batch_size, dtype=self.dtype
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _stop_cut(tokens: Sequence[int], stops: Sequence[str], tokenizer) -> tuple[int, str] | None:
    """(tokens to keep, text before the stop) as decoding that checks the stop strings after
    every token would end: at the first token whose text holds a stop string, the text cut
    before the earliest stop string in it. None when no stop string appears.
    """
    stops = [s for s in stops if s]
    if not stops:
        return None
    text = ""
    for j, t in enumerate(tokens):
        if t == tokenizer.eos_id:
            return None
        text += tokenizer.decode([t])
        hits = [text.find(s) for s in stops if s in text]
        if hits:
            return j + 1, text[: min(hits)]
    return None


def _resolve_dtype(dtype: str) -> str:
    from fixable.organism.decode import DTYPES, bf16_supported

    if dtype == "auto":
        return "bfloat16" if bf16_supported() else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be 'float32', 'bfloat16' or 'auto', got {dtype!r}")
    return str(dtype)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch sees no CUDA GPU; use 'cpu'")
    if not (device == "cpu" or str(device).startswith("cuda")):
        raise ConfigError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {device!r}")
    return str(device)
