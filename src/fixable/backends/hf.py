"""The ``hf`` backend: any causal language model that transformers can load.

It runs its own decoding loop over the model's logits rather than ``generate``, because
the method needs what ``generate`` does not give: every token's log-prob under the
distribution actually sampled from, the full-vocabulary entropy and log-prob of the
policy at T=1, the geometric mixture with a reference model (two KV caches in lockstep),
layer-contrast (DoLa) decoding from the hidden states, and batch-invariant seeds.

Tokens are drawn with the same counter-based Gumbel noise as the organism engine
(``fixable.noise.gumbel_argmax``, step t of row seed s) from log-probs computed by the
same function (``fixable.distribution.sampling_logprobs``), so on the same weights and
seeds the ``hf`` and ``organism`` backends sample the same tokens (tests check it, mix,
DoLa and truncation included). The noise makes a row's randomness a function of its seed
alone; unlike the organism engine, this loop does not pin the floating-point summation
order across batch shapes, so a near-tie can in rare cases resolve differently in another
batch — hence no ``seeded`` capability.

Loading is local first: a directory written by ``save_pretrained`` (or
``fixable zoo export``), a GGUF file (``gguf:PATH``), or one of the real models that
install from PyPI as GGUF files, by short name (``smollm2-135m-instruct``,
``gemma-3-270m``; see ``fixable.backends.gguf_source``). A Hub id works where the user is
online; with ``HF_HUB_OFFLINE=1`` transformers refuses it with its own message.
transformers is imported only when a backend is built.

Speed on a CPU: weights run in bfloat16 where the CPU has native bf16 matmuls (AVX512-BF16
or AMX; ``dtype="auto"``, the default, for GGUF and 16-bit checkpoints), the process uses
one torch thread unless told otherwise (on a shared machine more threads than free cores
made decoding ten times slower), and tokens are drawn with ``fixable.fastnoise``, the same
counter-based noise without its full-vocabulary float64 temporaries.

On a GPU (``device="auto"``, the default, takes one when torch sees it) the same loop runs
in bfloat16 with the noise computed on the GPU. Reproducible from the manifest and seeds
on the same kind of device, not bit for bit across devices: the GPU's float64 logarithm
and its matmul reductions round differently from the CPU's, which can flip a near-tie.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fixable.backends.base import (
    CHECKPOINT,
    DOLA,
    FULL_ENTROPY,
    MIX,
    SCORE,
    DistributionCapabilities,
    Generation,
    GenerationRequest,
    check_capabilities,
)
from fixable.errors import CapabilityError, ConfigError, UnknownNameError
from fixable.interventions import (
    SYMBOLIC_CHECKPOINTS,
    Intervention,
    SamplingSpec,
    checkpoint_order,
    resolve_checkpoint,
)
from fixable.registry import backends

logger = logging.getLogger(__name__)

DTYPES = ("auto", "float32", "bfloat16", "float16")
# float32 logits one teacher-forced batch may hold (1 GiB): rows x length x vocabulary
# grows fast with a 262 k-token vocabulary (64 rows x 856 tokens of Gemma-3 would be 57 GB)
SCORE_LOGIT_ELEMENTS = 1 << 28


def bf16_is_native(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (else bf16 is emulated and
    slower than float32)."""
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    if device != "cpu":
        return False
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def stored_dtype(source: str) -> str | None:
    """The dtype a model directory's config records (None for GGUF files and Hub ids)."""
    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    import json

    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("dtype") or data.get("torch_dtype")
    return str(value) if value else "float32"


def resolve_dtype(dtype: str, device: str, source: str, is_gguf: bool) -> str:
    """``"auto"``: a float32 checkpoint (or a Hub id) stays float32, so that its log-probs
    are exact; a GGUF file or a 16-bit checkpoint runs in bfloat16 where the device does
    bf16 natively, else in float32."""
    if dtype != "auto":
        return dtype
    stored = None if is_gguf else stored_dtype(source)
    if not is_gguf and stored in (None, "float32"):
        return "float32"
    return "bfloat16" if bf16_is_native(device) else "float32"


def _load_hint(source: str, error: Exception) -> str:
    return (
        f"cannot load {source!r} with transformers: {error}. Give a local directory written "
        "by save_pretrained (e.g. `fixable zoo export NAME OUT`), or a Hub id while online"
    )


def locate(source: str) -> str:
    """The directory of a built real-model variant (``fixable zoo build --real``) named
    ``source``; anything else unchanged."""
    if "/" in source or Path(source).exists():
        return source
    from fixable import realzoo

    built = realzoo.resolve(source)
    return source if built is None else str(built)


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when torch sees a CUDA GPU, else ``"cpu"``; ``"cpu"``,
    ``"cuda"`` and ``"cuda:N"`` as they are, checked against what torch sees (a ConfigError
    in one line otherwise). Shared by the hf backend and ``fixable.realzoo``."""
    import torch

    device = str(device).strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asked for, but torch sees no CUDA GPU (torch "
                f"{torch.__version__}); use device=cpu, or device=auto to take a GPU when present"
            )
        index = int(device[5:]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} "
                "CUDA GPU(s); use cuda:0"
            )
        return device
    raise ConfigError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


class _Model:
    """A loaded causal LM with what the loop needs to know about it."""

    def __init__(self, source: str, *, device: str, dtype: str, trust_remote_code: bool):
        import torch
        from transformers import AutoModelForCausalLM

        from fixable.backends import gguf_source

        self.source = source
        self.gguf = gguf_source.resolve(source)
        where, extra = locate(source), {}
        if self.gguf is not None:
            where, extra = self.gguf.directory, gguf_source.load_kwargs(self.gguf)
        try:
            self.lm = AutoModelForCausalLM.from_pretrained(
                where, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code, **extra
            )
        except (OSError, ValueError) as e:
            raise ConfigError(_load_hint(source, e)) from None
        self.lm.to(device).eval()
        self.device = device
        self.n_layers = int(self.lm.config.num_hidden_layers)
        self.vocab_size = int(self.lm.get_output_embeddings().weight.shape[0])
        params = inspect.signature(self.lm.forward).parameters
        # transformers 5 renamed past_key_values to cache; accept either release
        self.cache_arg = "cache" if "cache" in params else "past_key_values"

    def new_cache(self):
        from transformers import DynamicCache

        try:
            return DynamicCache(config=self.lm.config)
        except TypeError:
            return DynamicCache()

    def forward(self, ids, mask, positions, cache, *, hidden: bool = False, last_only: bool):
        kwargs = {
            "input_ids": ids,
            "attention_mask": mask,
            "position_ids": positions,
            self.cache_arg: cache,
            "use_cache": cache is not None,
            "output_hidden_states": hidden,
        }
        if last_only:
            kwargs["logits_to_keep"] = 1
        return self.lm(**kwargs)

    def early_exit_logits(self, hidden_state):
        """Logits from an intermediate residual stream through the final norm and the head."""
        base = getattr(self.lm, "model", None)
        norm = getattr(base, "norm", None)
        if norm is None:
            raise CapabilityError(
                f"model {self.source!r} has no `model.norm`: DoLa needs a Llama-style layout"
            )
        return self.lm.get_output_embeddings()(norm(hidden_state))


@backends.register("hf")
class HFBackend:
    """Sampling and teacher-forced scoring with transformers, under every intervention.

    Args:
        model: a directory written by ``save_pretrained``, a GGUF file (``gguf:PATH``), a
            packaged real model's short name (``smollm2-135m-instruct``,
            ``gemma-3-270m``), or a Hub id (online only).
        reference: the reference model (same tokenizer) for ``mix`` and reference scoring.
        checkpoints: label → directory of earlier checkpoints, for ``checkpoint(c)``; a
            ``c`` that is not a label is taken as a directory; ``first`` and ``last`` are
            the labels with the smallest and largest step number in their names.
        device: ``"auto"`` (the default: the CUDA GPU when torch sees one, else the CPU),
            ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. On a GPU, ``dtype="auto"`` runs GGUF
            and 16-bit checkpoints in bfloat16 where the GPU has it (any since Ampere).
        dtype: weights' dtype, or ``"auto"`` (see :func:`resolve_dtype`: bfloat16 for GGUF
            and 16-bit checkpoints where the device has native bf16, else float32); log-probs
            and entropies are always computed in float32.
        batch_size: rows decoded together (prompts × samples).
        chat_template: wrap each prompt as one user message in the tokenizer's chat
            template (for instruction-tuned models); off by default because task prompts
            arrive already templated for their task.
        add_bos: prepend the tokenizer's bos token when its encoding does not start with
            it. ``None`` (default) decides from the tokenizer: yes when it defines a bos
            token and its ``add_bos_token`` setting (or the organism export's marker) asks
            for it.
        trust_remote_code: passed to transformers.
        threads: torch threads of this process (default 1: one process per core beats
            threads competing for shared cores); None leaves torch's setting alone.
    """

    name = "hf"
    # retry, temperature, top_p, min_p and every other distribution-only kind, plus these
    capabilities = DistributionCapabilities(MIX, CHECKPOINT, DOLA, SCORE, FULL_ENTROPY)

    def __init__(
        self,
        model: str | Path,
        *,
        reference: str | Path | None = None,
        checkpoints: Mapping[str, str | Path] | None = None,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 64,
        chat_template: bool = False,
        add_bos: bool | None = None,
        trust_remote_code: bool = False,
        threads: int | None = 1,
    ):
        if dtype not in DTYPES:
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer or None, got {threads!r}")
        import torch
        from transformers import AutoTokenizer

        from fixable.backends import gguf_source

        self.device = resolve_device(device)
        if threads is not None:  # on a GPU too: its CPU-side work is small and serial
            torch.set_num_threads(threads)
        self.batch_size = batch_size
        self.chat_template = chat_template
        self.trust_remote_code = trust_remote_code
        self.source = str(model)
        if checkpoints is None and locate(self.source) != self.source:
            from fixable import realzoo

            checkpoints = realzoo.checkpoints(self.source)  # a built real variant's own
        gguf = gguf_source.resolve(self.source)
        self.dtype = resolve_dtype(dtype, self.device, locate(self.source), gguf is not None)
        where, extra = locate(self.source), {}
        if gguf is not None:
            where, extra = gguf.directory, {"gguf_file": gguf.file}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                where, trust_remote_code=trust_remote_code, **extra
            )
        except (OSError, ValueError) as e:
            raise ConfigError(_load_hint(self.source, e)) from None
        self.policy = self._load(self.source)
        self.reference = None if reference is None else self._load(str(reference))
        if self.reference is not None and self.reference.vocab_size != self.policy.vocab_size:
            raise ConfigError(
                f"reference {reference!r} has a vocabulary of {self.reference.vocab_size} but "
                f"the policy of {self.policy.vocab_size}: mixing needs a shared tokenizer"
            )
        self.checkpoints = {k: str(v) for k, v in (checkpoints or {}).items()}
        self._checkpoint_cache: tuple[str, _Model] | None = None
        self.add_bos = self._decide_bos() if add_bos is None else add_bos
        eos = self.policy.lm.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids = frozenset([eos] if isinstance(eos, int) else (eos or []))
        caps = set(self.capabilities)
        if self.reference is None:
            caps.discard(MIX)
        self.capabilities = frozenset(caps)

    # -- loading ---------------------------------------------------------------------------

    def _load(self, source: str) -> _Model:
        return _Model(
            source, device=self.device, dtype=self.dtype, trust_remote_code=self.trust_remote_code
        )

    def _decide_bos(self) -> bool:
        tok = self.tokenizer
        if tok.bos_token_id is None:
            return False
        init = getattr(tok, "init_kwargs", {}) or {}
        if "add_bos_token" in init:
            return bool(init["add_bos_token"])
        return bool(getattr(tok, "add_bos_token", False))

    def _checkpoint_model(self, label: str) -> _Model:
        source = self.checkpoints.get(label)
        if source is None:
            if not Path(label).is_dir():
                raise UnknownNameError("checkpoint", label, self.checkpoints)
            source = label
        # keep one checkpoint resident: a sweep visits them one at a time
        if self._checkpoint_cache is None or self._checkpoint_cache[0] != source:
            self._checkpoint_cache = (source, self._load(source))
        return self._checkpoint_cache[1]

    @property
    def model_name(self) -> str:
        return self.source

    def identity(self) -> dict:
        """What a run's manifest records to reproduce this backend's samples."""
        import transformers

        from fixable.sampling import weights_sha256

        def model_id(m: _Model | None) -> dict | None:
            if m is None:
                return None
            if m.gguf is not None:
                return {
                    "source": m.source,
                    "gguf_file": str(m.gguf.path),
                    "gguf_sha256": m.gguf.sha256(),
                    "hub_revision": None,
                }
            return {
                "source": m.source,
                # per-file hashes, remembered per process (the policy's were already
                # taken by sampling.model_identity); None for a Hub id
                "weights_sha256": (
                    weights_sha256(locate(m.source)) if Path(locate(m.source)).is_dir() else None
                ),
                "hub_revision": getattr(m.lm.config, "_commit_hash", None),
            }

        return {
            "policy": model_id(self.policy),
            "reference": model_id(self.reference),
            "checkpoints": dict(self.checkpoints),
            "dtype": self.dtype,
            "device": self.device,
            "chat_template": self.chat_template,
            "add_bos": self.add_bos,
            "transformers": transformers.__version__,
        }

    # -- tokens ----------------------------------------------------------------------------

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt as decoding feeds it (chat template and bos applied)."""
        tok = self.tokenizer
        if self.chat_template:
            text = self.chat_prompt([{"role": "user", "content": text}])
            ids = tok(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tok(text, add_special_tokens=True)["input_ids"]
        if self.add_bos and (not ids or ids[0] != tok.bos_token_id):
            ids = [tok.bos_token_id, *ids]
        return list(ids)

    def chat_prompt(self, messages: list[dict]) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ConfigError(
                f"the tokenizer of {self.source!r} has no chat template: use plain prompts"
            )
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def token_text(self, token_id: int) -> str:
        return self.tokenizer.convert_ids_to_tokens(int(token_id))

    def decode_ids(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- batching helpers ------------------------------------------------------------------

    def _left_pad(self, rows: Sequence[Sequence[int]]):
        import torch

        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        pad = 0 if pad is None else pad
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
                mask[i, width - len(r) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        return ids.to(self.device), mask.to(self.device), positions.to(self.device)

    # -- teacher forcing -------------------------------------------------------------------

    def next_token_logprobs(self, sequences: Sequence[Sequence[int]], *, which: str = "policy"):
        """For each sequence of length L, a (L-1, V) float32 CPU tensor of log p(x_t | x_<t)."""
        return self._teacher_forced(sequences, which, lambda i, rows: rows.cpu())

    def _teacher_forced(self, sequences, which: str, take) -> list:
        """``take(i, rows)`` of each sequence's (L-1, V) next-token log-probs, computed one
        batch at a time, so that only what ``take`` keeps outlives its batch."""
        import torch

        model = self._which(which)
        out: list[Any] = [None] * len(sequences)
        order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
        with torch.inference_mode():
            for chunk in self._score_batches(order, sequences, model.vocab_size):
                rows = [sequences[i] for i in chunk]
                ids, mask, positions = self._left_pad(rows)
                logits = model.forward(ids, mask, positions, None, last_only=False).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1)
                width = ids.shape[1]
                for j, i in enumerate(chunk):
                    n = len(sequences[i])
                    out[i] = take(i, logprobs[j, width - n : width - 1])
        return out

    def _score_batches(self, order: list[int], sequences, vocab_size: int):
        """``order`` (longest first) cut into batches of at most ``batch_size`` rows whose
        padded logits stay within ``SCORE_LOGIT_ELEMENTS`` (at least one row each)."""
        start = 0
        while start < len(order):
            width = max(1, len(sequences[order[start]]))  # the longest row pads the batch
            rows = max(1, min(self.batch_size, SCORE_LOGIT_ELEMENTS // (width * vocab_size)))
            yield order[start : start + rows]
            start += rows

    def score(
        self, prompts: Sequence[str], completions: Sequence[Sequence[int]], *, which: str = "policy"
    ) -> list[list[float]]:
        import torch

        if len(prompts) != len(completions):
            raise ConfigError(f"{len(prompts)} prompts but {len(completions)} completions")
        self._which(which)  # validate before any work
        prompt_ids = [self.encode_prompt(p) for p in prompts]
        targets = [[int(t) for t in c] for c in completions]
        sequences = [p + t for p, t in zip(prompt_ids, targets, strict=True)]

        def picked(i: int, rows) -> list[float]:
            # gather the completion's log-probs inside the batch: full (L-1, V) rows of a
            # large vocabulary would otherwise be kept for every sequence until the end
            if not targets[i]:
                return []
            index = torch.tensor(targets[i], dtype=torch.long, device=rows.device)
            return rows[len(prompt_ids[i]) - 1 :].gather(-1, index[:, None])[:, 0].tolist()

        return self._teacher_forced(sequences, which, picked)

    def _which(self, which: str) -> _Model:
        if which == "policy":
            return self.policy
        if which == "reference":
            if self.reference is None:
                raise CapabilityError(
                    "no reference model: pass reference=DIRECTORY to the hf backend"
                )
            return self.reference
        raise ConfigError(f"which must be 'policy' or 'reference', got {which!r}")

    # -- sampling --------------------------------------------------------------------------

    def generate(
        self, requests: Sequence[GenerationRequest], intervention: Intervention
    ) -> list[Generation]:
        check_capabilities(self, [intervention])
        spec = intervention.spec
        policy = self.policy
        if spec.checkpoint in SYMBOLIC_CHECKPOINTS and spec.checkpoint not in self.checkpoints:
            # the earliest / latest of the labelled checkpoints, by the step in their names
            labels = sorted(self.checkpoints, key=checkpoint_order)
            spec = resolve_checkpoint(intervention, labels, model=self.source).spec
        if spec.checkpoint is not None:
            policy = self._checkpoint_model(spec.checkpoint)
        reference = self.reference if spec.alpha > 0 else None
        if spec.dola_layer is not None and not 0 <= spec.dola_layer < policy.n_layers:
            raise ConfigError(
                f"dola layer must be in [0, {policy.n_layers - 1}] for {self.source!r} "
                f"({policy.n_layers} layers), got {spec.dola_layer}"
            )
        prompt_ids = [self.encode_prompt(r.prompt) for r in requests]
        results: list[Generation | None] = [None] * len(requests)
        # longest prompts first: rows of one batch then pad little
        order = sorted(range(len(requests)), key=lambda i: -len(prompt_ids[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            t0 = time.perf_counter()
            gens = self._decode(
                policy,
                [prompt_ids[i] for i in chunk],
                [requests[i] for i in chunk],
                spec=spec,
                reference=reference,
            )
            share = (time.perf_counter() - t0) / len(chunk)
            for i, g in zip(chunk, gens, strict=True):
                g.time_s = share
                results[i] = g
        return results  # type: ignore[return-value]

    def _decode(
        self,
        model: _Model,
        prompts: list[list[int]],
        requests: list[GenerationRequest],
        *,
        spec: SamplingSpec,
        reference: _Model | None,
    ) -> list[Generation]:
        import torch

        from fixable.distribution import sampling_logprobs
        from fixable.fastnoise import gumbel_argmax

        dola_layer = spec.dola_layer

        n = len(prompts)
        seeds = torch.tensor([r.seed for r in requests], dtype=torch.int64)
        limits = torch.tensor([r.max_tokens for r in requests], dtype=torch.long)
        tokens: list[list[int]] = [[] for _ in range(n)]
        logprobs: list[list[float]] = [[] for _ in range(n)]
        entropies: list[list[float]] = [[] for _ in range(n)]
        policy_lps: list[list[float]] = [[] for _ in range(n)]
        finish = ["length"] * n
        texts: list[str | None] = [None] * n
        stops = [r.stop for r in requests]

        with torch.inference_mode():
            # rows sampling the same prompt (K rollouts of one problem) share its prefill:
            # each distinct prompt is run once and its cache rows repeated
            distinct: dict[tuple[int, ...], int] = {}
            source_row = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
            ids, mask, positions = self._left_pad([list(p) for p in distinct])
            caches = [model.new_cache()]
            out = model.forward(
                ids, mask, positions, caches[0], hidden=dola_layer is not None, last_only=True
            )
            last = self._last(out, dola_layer)
            ref_last = None
            if reference is not None:
                caches.append(reference.new_cache())
                ref_out = reference.forward(ids, mask, positions, caches[1], last_only=True)
                ref_last = self._last(ref_out, None)
            if len(distinct) < n:
                index = torch.tensor(source_row, dtype=torch.long, device=self.device)
                for cache in caches:
                    cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                last = tuple(t[index] for t in last)
                ref_last = None if ref_last is None else tuple(t[index] for t in ref_last)
            active = torch.arange(n)  # original row of each batch row
            next_pos = positions[:, -1] + 1
            step = 0
            while active.numel() > 0:
                policy_lp = torch.log_softmax(last[0].float(), dim=-1)
                ref_lp = None
                if ref_last is not None:
                    ref_lp = torch.log_softmax(ref_last[0].float(), dim=-1)
                early_lp = None
                if dola_layer is not None:
                    early = model.early_exit_logits(last[1])
                    early_lp = torch.log_softmax(early.float(), dim=-1)
                sample_lp = sampling_logprobs(policy_lp, spec, ref_lp, early_lp)
                chosen = gumbel_argmax(sample_lp, seeds[active], step).to(self.device)
                gather = chosen[:, None]
                # one device-to-host copy per step (each .cpu() is a GPU sync)
                step_values = torch.stack(
                    [
                        chosen.double(),
                        sample_lp.gather(-1, gather)[:, 0].double(),
                        policy_lp.gather(-1, gather)[:, 0].double(),
                        -(policy_lp.exp() * policy_lp).nan_to_num().sum(-1).double(),
                    ]
                ).cpu()
                chosen_ids, chosen_lp, chosen_policy, entropy = step_values.tolist()
                keep = []
                for j, row in enumerate(active.tolist()):
                    tok = int(chosen_ids[j])
                    tokens[row].append(tok)
                    logprobs[row].append(chosen_lp[j])
                    policy_lps[row].append(chosen_policy[j])
                    entropies[row].append(entropy[j])
                    ended = tok in self.eos_ids or (
                        stops[row] and self._cut_at_stop(row, tokens, texts, stops)
                    )
                    if ended:
                        finish[row] = "stop"
                    elif len(tokens[row]) >= int(limits[row]):
                        finish[row] = "length"
                    else:
                        keep.append(j)
                step += 1
                if not keep:
                    break
                if len(keep) < active.numel():
                    index = torch.tensor(keep, dtype=torch.long, device=self.device)
                    for cache in caches:
                        cache.batch_select_indices(index)
                    mask, next_pos, chosen = mask[index], next_pos[index], chosen[index]
                    active = active[index.cpu()]
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                step_ids, step_pos = chosen[:, None], next_pos[:, None]
                out = model.forward(
                    step_ids,
                    mask,
                    step_pos,
                    caches[0],
                    hidden=dola_layer is not None,
                    last_only=True,
                )
                last = self._last(out, dola_layer)
                if reference is not None:
                    ref_out = reference.forward(step_ids, mask, step_pos, caches[1], last_only=True)
                    ref_last = self._last(ref_out, None)
                next_pos = next_pos + 1

        gens = []
        for row in range(n):
            text = texts[row]
            if text is None:
                text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
            gens.append(
                Generation(
                    text=text,
                    token_ids=tokens[row],
                    logprobs=logprobs[row],
                    entropies=entropies[row],
                    policy_logprobs=policy_lps[row],
                    entropy_kind="full",
                    finish_reason=finish[row],
                    meta={"seed": requests[row].seed},
                )
            )
        return gens

    @staticmethod
    def _last(out, dola_layer: int | None) -> tuple:
        """The last position's logits and, for DoLa, its hidden state at ``dola_layer``."""
        if dola_layer is None:
            return (out.logits[:, -1],)
        return (out.logits[:, -1], out.hidden_states[dola_layer][:, -1])

    def _cut_at_stop(self, row: int, tokens, texts, stops) -> bool:
        """Whether row's text now contains a stop string; if so, remember it cut before it.

        Called after every token, so it decodes only a tail window: a stop string of L
        characters is at most 4L UTF-8 bytes, so its bytes lie in the last 4L tokens (every
        non-special token is at least one byte); 8 tokens more keep a window that starts
        inside a character or drops a leading space away from it. Only on a hit is the
        whole text decoded, once, to cut it."""
        window = 4 * max(len(s) for s in stops[row]) + 8
        tail = self.tokenizer.decode(tokens[row][-window:], skip_special_tokens=True)
        if not any(s in tail for s in stops[row]):
            return False
        text = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
        hits = [text.find(s) for s in stops[row] if s in text]
        if not hits:
            return False
        texts[row] = text[: min(hits)]
        return True
