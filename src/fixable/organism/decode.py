"""Batched, seeded decoding of organism models, with the interventions built in.

``decode`` samples completions for many prompts at once with a KV cache and reports, for
every generated token, its log-prob under the distribution sampled from, the entropy of
the policy's own T=1 next-token distribution and the policy's T=1 log-prob. Interventions
act on the next-token distribution: temperature, greedy, geometric mixing with a reference
model (two KV caches in lockstep) and DoLa (contrast with an early-exit layer). ``decode``
takes the request's ``SamplingSpec`` whole and hands it to
``fixable.distribution.sampling_logprobs``, the distribution arithmetic shared with the
``hf`` backend; this module steps the models whose log-probs it combines and names no
field that only that function reads (a new truncation needs no change here).

Batch invariance. Row i's tokens depend only on (model, prompts[i], seeds[i], settings).
The noise is counter-based (``fixable.noise``), but that alone is not enough: if the
logits of a row changed in their last bits with the batch around it, a near-tie would now
and then flip a token, and rounding log-probs to a grid does not help (a grid only trades
many tiny differences for rare whole-step ones; the chance that one flips a decision stays
the same). So the logits themselves are made bitwise independent of the batch:

* every row's cache layout is a function of the row alone: prompts are left-padded to
  their own length rounded up to ``PROMPT_BUCKET`` and rows are grouped by that padded
  length, so a row sees the same key positions and the same number of keys in any batch;
* matrix products never run on fewer than ``MIN_ROWS`` rows (CPU GEMM kernels take another
  summation order for a handful of rows); smaller batches get filler rows;
* attention is written out as two batched matmuls and a softmax (``_forward``), each row
  on its own, instead of the fused ``scaled_dot_product_attention`` CPU kernel, whose
  summation order depends on the batch and on how the work is split over threads.

Tests check the result: the same seeds in batches of 1, 7 and 64 rows, shuffled and mixed
with other prompts, give identical tokens.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F

from fixable import distribution
from fixable.distribution import DOLA_PLAUSIBILITY as DOLA_PLAUSIBILITY  # the manifest's
from fixable.interventions import SamplingSpec
from fixable.noise import gumbel_argmax
from fixable.organism.model import OrganismLM, rotate_half

log = logging.getLogger(__name__)

MIN_ROWS = 32  # fewest rows a matmul runs on; below ~12 CPU GEMM changes its summation order
PROMPT_BUCKET = 32  # prompts are left-padded to a multiple of this (and grouped by it)
_COMPACT_SHARE = 0.75  # drop finished rows once no more than this share of the batch is active


@dataclass
class Decoded:
    token_ids: list[list[int]]  # per row: generated ids, incl. the final <eos> if finish is "stop"
    logprobs: list[list[float]]  # per token: log-prob under the distribution actually sampled from
    entropies: list[list[float]]  # per token: entropy (nats) of the policy's own T=1 distribution
    policy_logprobs: list[list[float]]  # per token: log p_policy(token) at T=1
    finish_reasons: list[str]  # "stop" (eos sampled) or "length"


def decode(
    model: OrganismLM,
    prompts: list[list[int]],
    seeds: list[int],
    spec: SamplingSpec | None = None,
    *,
    max_new_tokens: int = 160,
    eos_id: int = 2,
    greedy: bool = False,
    reference: OrganismLM | None = None,
    batch_size: int = 512,
    dtype: str | torch.dtype = "float32",
    **spec_fields,
) -> Decoded:
    """Sample one completion per (prompt, seed) row.

    Args:
        model: the policy.
        prompts: token-id lists, each starting with <bos> (``CharTokenizer.encode(p, bos=True)``).
        seeds: one seed per row; row i's tokens are a pure function of its seed and prompt.
        spec: the distribution to sample (``Intervention.spec``), read whole by
            ``fixable.distribution.sampling_logprobs``; its fields are validated by
            ``SamplingSpec`` itself. ``spec.alpha`` needs ``reference``; ``spec.dola_layer``
            must be in [0, n_layer - 1] (0 = the embeddings); ``spec.checkpoint`` is the
            caller's to resolve (pass that checkpoint as ``model``). Default: the policy.
        max_new_tokens: most tokens generated per row (a GPT-family model also stops at
            its ``block_size``, which its learned positions cannot go past).
        eos_id: the end-of-sequence id; sampling it ends the row with finish "stop".
        greedy: take the argmax of the (intervened, untempered) distribution.
        reference: the reference model for mixing (same vocabulary).
        batch_size: most rows decoded at once (memory: the KV cache of one batch).
        dtype: ``"float32"`` or ``"bfloat16"``: the precision of the linear layers'
            weights and inputs (``_forward``); log-softmax, entropies and log-probs are
            fp32 either way.
        **spec_fields: ``SamplingSpec`` fields by name (``temperature=0.7``, ``alpha=0.5``,
            ``top_p=0.9``…), for callers that build no spec; they replace ``spec``'s.
            ``temperature=0`` means greedy.
    """
    compute_dtype = resolve_dtype(dtype)
    spec, greedy = _spec_of(spec, greedy, spec_fields)
    _validate(model, prompts, seeds, max_new_tokens, reference, spec, batch_size)
    n = len(prompts)
    out = Decoded(
        [[] for _ in range(n)],
        [[] for _ in range(n)],
        [[] for _ in range(n)],
        [[] for _ in range(n)],
        ["length"] * n,
    )
    if n == 0 or max_new_tokens == 0:
        return out
    settings = _Settings(
        # greedy takes the argmax of the untempered distribution
        spec=replace(spec, temperature=1.0) if greedy else spec,
        greedy=greedy,
        max_new_tokens=int(max_new_tokens),
        eos_id=int(eos_id),
        reference=reference if spec.alpha > 0 else None,
        dtype=compute_dtype,
    )
    # Group rows by padded prompt length (the cache layout), then by prompt, so that the
    # rows of one prompt share a prefill; the grouping never changes any row's result.
    padded = [_padded_length(len(p)) for p in prompts]
    order = sorted(range(n), key=lambda i: (padded[i], tuple(prompts[i]), i))
    chunks: list[list[int]] = []
    for i in order:
        if chunks and padded[chunks[-1][0]] == padded[i] and len(chunks[-1]) < batch_size:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    with torch.inference_mode():
        for rows in chunks:
            _decode_chunk(
                model,
                [prompts[i] for i in rows],
                [seeds[i] for i in rows],
                padded[rows[0]],
                settings,
                out,
                rows,
            )
    return out


def _spec_of(
    spec: SamplingSpec | None, greedy: bool, spec_fields: dict
) -> tuple[SamplingSpec, bool]:
    """The spec ``decode`` samples and whether it takes the argmax: ``spec`` (default: the
    policy's) with the keyword fields replaced; ``temperature=0`` is greedy."""
    spec = spec if spec is not None else SamplingSpec()
    known = {f.name for f in fields(spec)}
    unknown = sorted(set(spec_fields) - known)
    if unknown:
        raise TypeError(
            f"decode() got unexpected keyword arguments {', '.join(unknown)}; "
            f"sampling fields are {', '.join(sorted(known))}"
        )
    if spec_fields.get("temperature") == 0:
        spec_fields = {**spec_fields, "temperature": 1.0}
        greedy = True
    return (replace(spec, **spec_fields) if spec_fields else spec), bool(greedy)


@dataclass(frozen=True)
class _Settings:
    spec: SamplingSpec  # the distribution sampled from (greedy: the untempered one)
    greedy: bool
    max_new_tokens: int
    eos_id: int
    reference: OrganismLM | None
    dtype: torch.dtype = torch.float32


def _padded_length(length: int) -> int:
    return PROMPT_BUCKET * math.ceil(length / PROMPT_BUCKET)


def _validate(model, prompts, seeds, max_new_tokens, reference, spec, batch_size) -> None:
    """What the engine checks itself: the shapes of its inputs and what the spec needs of
    the models (a reference for mixing, enough layers for DoLa); the spec's own values
    were checked when it was built."""
    if len(prompts) != len(seeds):
        raise ValueError(
            f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    mixing = spec.alpha > 0
    if mixing and reference is None:
        raise ValueError(f"mixing with alpha={spec.alpha} needs a reference model")
    if reference is not None and reference.cfg.vocab_size != model.cfg.vocab_size:
        raise ValueError(
            f"reference vocabulary ({reference.cfg.vocab_size}) differs from the "
            f"model's ({model.cfg.vocab_size}); mixing needs the same tokenizer"
        )
    if spec.dola_layer is not None and spec.dola_layer >= model.cfg.n_layer:
        raise ValueError(
            f"dola_layer must be in [0, {model.cfg.n_layer - 1}] for a "
            f"{model.cfg.n_layer}-layer model, got {spec.dola_layer!r}"
        )
    vocab = model.cfg.vocab_size
    for i, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; prompts start with <bos>")
        if min(prompt) < 0 or max(prompt) >= vocab:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab - 1}]")
        for m in (model, reference if mixing else None):
            if m is not None and m.cfg.family == "gpt" and len(prompt) >= m.cfg.block_size:
                raise ValueError(
                    f"prompt {i} has {len(prompt)} tokens; a gpt-family model with "
                    f"block_size {m.cfg.block_size} needs fewer"
                )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` (or the torch dtype) → the torch dtype; else ValueError."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")


def bf16_supported() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX): where it
    does not, torch emulates bf16 and the bf16 path is slower than fp32."""
    try:
        return bool(torch.backends.mkldnn.is_available()) and bool(
            torch.ops.mkldnn._is_mkldnn_bf16_supported()
        )
    except (AttributeError, RuntimeError):
        return False


@dataclass
class _LayerWeights:
    # q, k, v projections stacked, q pre-scaled by 1/sqrt(head_dim); llama: then the same
    # q and k rows rotated (rotate_half of a projection is a signed permutation of its rows)
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    input_norm: torch.Tensor  # norm weights (and biases, gpt), fp32
    input_norm_bias: torch.Tensor | None
    post_norm: torch.Tensor
    post_norm_bias: torch.Tensor | None
    o: torch.Tensor
    o_bias: torch.Tensor | None
    up: torch.Tensor  # gpt: (Hm, C); llama: gate and up stacked, (2Hm, C)
    up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None


# Prepared weights per model, rebuilt when any parameter changes (training updates the
# weights in place between decode calls, which bumps the tensors' version counters).
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _weights(model: OrganismLM, dtype: torch.dtype) -> list[_LayerWeights]:
    """The weights of the linear layers as the decode loop uses them: q, k and v stacked
    into one matrix (one matmul instead of three), llama's gate and up likewise, the
    attention scale folded into q (exact when head_dim is a power of 4, as in the zoo),
    all in ``dtype``. Norms, embeddings and the output head stay in fp32."""
    version = tuple((p.data_ptr(), p._version) for p in model.parameters())
    cached = _PREPARED.get(model)
    if cached is not None and cached[0] == version and dtype in cached[1]:
        return cached[1][dtype]
    if cached is None or cached[0] != version:
        cached = (version, {})
        _PREPARED[model] = cached
    scale = 1.0 / math.sqrt(model.cfg.head_dim)
    out = []
    with torch.no_grad():
        for block in model.layers:
            attn, mlp = block.self_attn, block.mlp
            q_w = attn.q_proj.weight * scale
            qkv = torch.cat((q_w, attn.k_proj.weight, attn.v_proj.weight))
            qkv_bias = None
            if attn.q_proj.bias is not None:
                qkv_bias = torch.cat((attn.q_proj.bias * scale, attn.k_proj.bias, attn.v_proj.bias))
            if model.cfg.family == "llama":  # rows giving rotate_half(q) and rotate_half(k)
                H, D = model.cfg.n_head, model.cfg.head_dim
                qk = torch.cat((q_w, attn.k_proj.weight)).view(2, H, D, -1)
                qkv = torch.cat(
                    (
                        qkv,
                        rotate_half(qk.transpose(-1, -2))
                        .transpose(-1, -2)
                        .reshape(-1, qkv.shape[1]),
                    )
                )
            if model.cfg.family == "gpt":
                up, up_bias = mlp.up_proj.weight, mlp.up_proj.bias
            else:
                up, up_bias = torch.cat((mlp.gate_proj.weight, mlp.up_proj.weight)), None

            def cast(t):
                return None if t is None else t.detach().to(dtype).contiguous()

            norms = block.input_layernorm, block.post_attention_layernorm
            out.append(
                _LayerWeights(
                    cast(qkv),
                    cast(qkv_bias),
                    *(
                        t.detach().float() if t is not None else None
                        for norm in norms
                        for t in (norm.weight, getattr(norm, "bias", None))
                    ),
                    cast(attn.o_proj.weight),
                    cast(attn.o_proj.bias),
                    cast(up),
                    cast(up_bias),
                    cast(mlp.down_proj.weight),
                    cast(mlp.down_proj.bias),
                )
            )
    cached[1][dtype] = out
    return out


class _Cache:
    """Keys and values of every layer for the rows of a batch; ``length`` slots are filled.

    Keys are stored transposed, ``(layer, row, head, head_dim, slot)``, so that the
    scores of the filled slots, ``q @ k[..., :length]``, read each (row, head)'s keys in
    place: the CPU batched GEMM copies a slice of the untransposed layout first, which
    cost about as much as the product itself. Values stay ``(..., slot, head_dim)``."""

    def __init__(self, cfg, batch: int, max_len: int, device):
        L, H, D = cfg.n_layer, cfg.n_head, cfg.head_dim
        self.k = torch.zeros((L, batch, H, D, max_len), device=device)
        self.v = torch.zeros((L, batch, H, max_len, D), device=device)
        self.length = 0

    def select_filled(self, rows: torch.Tensor) -> _Cache:
        """The cache of ``rows`` (indices, repeats allowed), copying only the filled slots."""
        out = _Cache.__new__(_Cache)
        n = self.length
        out.k = self.k.new_empty((self.k.shape[0], len(rows), *self.k.shape[2:]))
        out.v = self.v.new_empty((self.v.shape[0], len(rows), *self.v.shape[2:]))
        out.k[..., :n] = self.k[:, rows, ..., :n]
        out.v[:, :, :, :n] = self.v[:, rows, :, :n]
        out.length = n
        return out


class _Stream:
    """One model's KV cache over the rows of a chunk, stepped one token at a time."""

    def __init__(self, model: OrganismLM, hidden_layer: int | None, dtype: torch.dtype):
        self.model = model
        self.hidden_layer = hidden_layer
        self.dtype = dtype
        self.weights = _weights(model, dtype)
        self.cache: _Cache | None = None
        self.rope: tuple[torch.Tensor, torch.Tensor] | None = None

    def prefill(self, idx, positions, key_mask, fan) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the unique prompts once, then fan their cache out to the rows (``fan``)."""
        U, P = idx.shape
        cache = _Cache(self.model.cfg, U, key_mask.shape[1], device=idx.device)
        self.rope = _rope_table(self.model, key_mask.shape[1], idx.device)
        allowed = torch.ones(P, P, dtype=torch.bool, device=idx.device).tril()[None]
        allowed = allowed & key_mask[:, None, :P]
        # a padding query attends to itself alone, so that no softmax row is empty (NaN)
        allowed = allowed | torch.eye(P, dtype=torch.bool, device=idx.device)[None]
        logits, early = _forward(
            self.model,
            self.weights,
            self.dtype,
            idx,
            positions,
            _bias(allowed[:, None]),
            cache,
            self.hidden_layer,
            self.rope,
        )
        self.cache = cache.select_filled(fan)
        return logits[:, -1][fan], None if early is None else early[:, -1][fan]

    def select(self, rows: torch.Tensor) -> None:
        self.cache = self.cache.select_filled(rows)

    def step(self, tokens, positions, bias) -> tuple[torch.Tensor, torch.Tensor | None]:
        logits, early = _forward(
            self.model,
            self.weights,
            self.dtype,
            tokens[:, None],
            positions[:, None],
            bias,
            self.cache,
            self.hidden_layer,
            self.rope,
        )
        return logits[:, 0], None if early is None else early[:, 0]


def _bias(allowed: torch.Tensor) -> torch.Tensor:
    """Additive attention bias: 0 where a key may be attended, -inf where not."""
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, float("-inf"))


def _rope_table(model: OrganismLM, length: int, device) -> tuple[torch.Tensor, torch.Tensor] | None:
    """cos and sin of the rotary angles of positions 0..length-1, (length, head_dim) each
    (None for the gpt family, whose positions are learned)."""
    if model.cfg.family == "gpt":
        return None
    freqs = torch.arange(length, device=device)[:, None].float() * model.inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _forward(
    model: OrganismLM,
    weights: list[_LayerWeights],
    dtype: torch.dtype,
    idx,
    positions,
    bias,
    cache: _Cache,
    hidden_layer: int | None,
    rope_table,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.forward`` with a KV cache, written with batch-invariant operations.

    Same weights as ``OrganismLM.forward``: the attention is spelled out (two batched
    matmuls and a softmax, each (row, head) on its own) instead of
    ``scaled_dot_product_attention``, whose fused CPU kernel sums in an order that depends
    on the batch and the thread split. The linear layers run in ``dtype`` on the prepared
    ``weights`` (``_weights``); the residual stream, norms, rotary embedding, attention,
    KV cache and output head stay fp32 (with bf16 only the inputs and outputs of the
    linear layers are rounded to bf16). Returns (B, T, V) fp32 logits and, when
    ``hidden_layer`` is set, the logits of the early exit after that many blocks.
    """
    cfg = model.cfg
    B, T = idx.shape
    H, D, C = cfg.n_head, cfg.head_dim, cfg.n_embd
    gpt = cfg.family == "gpt"
    x = model.embed_tokens(idx)
    if gpt:
        x = x + model.embed_positions(positions)
        norm = F.layer_norm
    else:
        cos = rope_table[0][positions][:, :, None, None]  # (B, T, 1, 1, D)
        sin = rope_table[1][positions][:, :, None, None]

        def norm(x, shape, weight, bias, eps):
            return F.rms_norm(x, shape, weight, eps)

    start = cache.length
    S = start + T
    eps = cfg.norm_eps
    early = model.head(x) if hidden_layer == 0 else None
    for i, w in enumerate(weights):
        h = norm(x, (C,), w.input_norm, w.input_norm_bias, eps).to(dtype)
        qkv = F.linear(h, w.qkv, w.qkv_bias).float().view(B, T, -1, H, D)
        qk = qkv[:, :, :2]
        if not gpt:  # rotary: rows 3 and 4 hold rotate_half(q) and rotate_half(k)
            qk = qk * cos + qkv[:, :, 3:5] * sin
        q = qk[:, :, 0].transpose(1, 2)  # (B, H, T, D), scaled by 1/sqrt(D) in the weights
        cache.k[i, :, :, :, start:S] = qk[:, :, 1].permute(0, 2, 3, 1)
        cache.v[i, :, :, start:S] = qkv[:, :, 2].transpose(1, 2)
        scores = torch.matmul(q, cache.k[i, ..., :S]) + bias
        y = torch.matmul(torch.softmax(scores, dim=-1), cache.v[i, :, :, :S])
        y = y.transpose(1, 2).reshape(B, T, C).to(dtype)
        x = x + F.linear(y, w.o, w.o_bias)
        h = norm(x, (C,), w.post_norm, w.post_norm_bias, eps).to(dtype)
        up = F.linear(h, w.up, w.up_bias)
        if gpt:
            up = F.gelu(up)
        else:
            gate, up = up.chunk(2, dim=-1)
            up = F.silu(gate) * up
        x = x + F.linear(up, w.down, w.down_bias)
        if hidden_layer == i + 1:
            early = model.head(x)
    cache.length = S
    return model.head(x), early


def _decode_chunk(
    model, prompts, seeds, padded_len, s: _Settings, out: Decoded, out_rows: list[int]
) -> None:
    device = next(model.parameters()).device
    n_real = len(prompts)
    # unique prompts, and for every row the unique prompt it continues
    unique: dict[tuple[int, ...], int] = {}
    fan_list = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
    row_seeds = list(seeds)
    if n_real < MIN_ROWS:  # filler rows (copies of row 0) keep every matmul on enough rows
        fan_list += [fan_list[0]] * (MIN_ROWS - n_real)
        row_seeds += [row_seeds[0]] * (MIN_ROWS - n_real)
    fan = torch.tensor(fan_list, device=device)
    U, P, N = len(unique), padded_len, s.max_new_tokens
    idx = torch.zeros(U, P, dtype=torch.long, device=device)
    key_mask = torch.zeros(U, P + N, dtype=torch.bool, device=device)
    key_mask[:, P:] = True  # generated slots; each is only read once it is written
    lengths = torch.zeros(U, dtype=torch.long, device=device)
    for prompt, u in unique.items():
        idx[u, P - len(prompt) :] = torch.tensor(prompt, device=device)
        key_mask[u, P - len(prompt) : P] = True
        lengths[u] = len(prompt)
    positions = (torch.arange(P, device=device)[None] - (P - lengths)[:, None]).clamp(min=0)

    policy = _Stream(model, s.spec.dola_layer, s.dtype)
    logits, early = policy.prefill(idx, positions, key_mask, fan)
    reference = None
    ref_logits = None
    if s.reference is not None:
        reference = _Stream(s.reference, None, s.dtype)
        ref_logits, _ = reference.prefill(idx, positions, key_mask, fan)

    B = len(fan_list)
    row_id = torch.arange(B, device=device)  # chunk row each batch row holds (>= n_real: filler)
    row_len = lengths[fan]
    row_bias = _bias(key_mask[fan][:, None, None, :])  # (B, 1, 1, P + N)
    seed_t = torch.tensor([_to_int64(x) for x in row_seeds], dtype=torch.int64, device=device)
    # GPT-family positions are learned up to block_size: a row stops there ("length")
    last_position = _last_position(model, s.reference)
    limit = row_len.new_full((B,), N)
    if last_position is not None:
        limit = torch.clamp(last_position + 1 - row_len, max=N)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    done[n_real:] = True  # filler rows are never recorded
    records: list[tuple[torch.Tensor, ...]] = []
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    max_steps = int(limit.max())
    spec = s.spec
    for t in range(max_steps):
        policy_logp = torch.log_softmax(logits.float(), dim=-1)
        entropy = -(policy_logp.exp() * policy_logp).sum(-1)
        ref_logp = torch.log_softmax(ref_logits.float(), dim=-1) if ref_logits is not None else None
        early_logp = torch.log_softmax(early.float(), dim=-1) if early is not None else None
        # the shared arithmetic of fixable.distribution (the hf backend calls it too)
        sampled = distribution.sampling_logprobs(policy_logp, spec, ref_logp, early_logp)
        if s.greedy:
            token = torch.argmax(sampled, dim=-1)
            token_logp = torch.zeros(B, device=device)  # a point mass: log 1
        else:
            token = gumbel_argmax(sampled, seed_t, t)
            token_logp = sampled.gather(1, token[:, None])[:, 0]
        policy_token_logp = policy_logp.gather(1, token[:, None])[:, 0]
        live = ~done
        # whole batch rows, filtered once at the end: fewer small ops per step
        records.append((t, row_id, live, token, token_logp, entropy, policy_token_logp))
        is_eos = token == s.eos_id
        stopped_now = live & is_eos
        rows_now = row_id[stopped_now]
        if rows_now.numel():
            stopped[rows_now] = True
        done = done | is_eos | (t + 1 >= limit)
        if bool(done.all()) or t + 1 >= max_steps:
            break
        n_live = int((~done).sum())
        if n_live <= _COMPACT_SHARE * len(row_id) and len(row_id) > MIN_ROWS:
            keep = torch.nonzero(~done)[:, 0]
            if len(keep) < MIN_ROWS:  # top up with finished rows as filler
                extra = torch.nonzero(done)[:, 0][: MIN_ROWS - len(keep)]
                keep = torch.cat((keep, extra))
            row_id, row_len, row_bias, seed_t = (
                row_id[keep],
                row_len[keep],
                row_bias[keep],
                seed_t[keep],
            )
            limit, done, token = limit[keep], done[keep], token[keep]
            policy.select(keep)
            if reference is not None:
                reference.select(keep)
            B = len(keep)
        position = row_len + t
        if last_position is not None:  # finished filler rows may run past the last position
            position = position.clamp(max=last_position)
        bias = row_bias[..., : P + t + 1]
        logits, early = policy.step(token, position, bias)
        if reference is not None:
            ref_logits, _ = reference.step(token, position, bias)
    _collect(records, stopped, n_real, out, out_rows)


def _last_position(model: OrganismLM, reference: OrganismLM | None) -> int | None:
    """The last position every model in play can embed (GPT-family models learn positions
    up to their block_size), or None when there is no such limit."""
    sizes = [
        m.cfg.block_size for m in (model, reference) if m is not None and m.cfg.family == "gpt"
    ]
    return min(sizes) - 1 if sizes else None


def _to_int64(seed: int) -> int:
    seed = int(seed) & ((1 << 64) - 1)
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _collect(records, stopped, n_real, out: Decoded, out_rows: list[int]) -> None:
    steps = torch.cat([torch.full_like(r[1], r[0]) for r in records])
    rows, live, tokens, logps, ents, plps = (
        torch.cat(col) for col in list(zip(*records, strict=True))[1:]
    )
    rows, steps, tokens, logps, ents, plps = (
        x[live].cpu() for x in (rows, steps, tokens, logps, ents, plps)
    )
    order = torch.argsort(rows * (1 << 20) + steps)
    rows, tokens, logps, ents, plps = (
        rows[order],
        tokens[order],
        logps[order],
        ents[order],
        plps[order],
    )
    counts = torch.bincount(rows, minlength=n_real)[:n_real].tolist()
    tokens, logps, ents, plps = tokens.tolist(), logps.tolist(), ents.tolist(), plps.tolist()
    start = 0
    for r, count in enumerate(counts):
        end = start + count
        i = out_rows[r]
        out.token_ids[i] = tokens[start:end]
        out.logprobs[i] = logps[start:end]
        out.entropies[i] = ents[start:end]
        out.policy_logprobs[i] = plps[start:end]
        out.finish_reasons[i] = "stop" if bool(stopped[r]) else "length"
        start = end


def teacher_forced_logprobs(
    model: OrganismLM,
    prompts: Sequence[Sequence[int]],
    completions: Sequence[Sequence[int]],
    *,
    batch_size: int = 512,
    dtype: str | torch.dtype = "float32",
) -> list[list[float]]:
    """log p_model(token | prefix) of every completion token, teacher-forced, in batches.

    ``prompts`` start with <bos> as in ``decode``. Like ``decode``, a row's values do not
    depend on the batch it is scored in (same bucketing and attention), so stored
    reference log-probs are reproducible under any batching. ``dtype`` as in ``decode``.
    """
    compute_dtype = resolve_dtype(dtype)
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    sequences = [list(p) + [int(t) for t in c] for p, c in zip(prompts, completions, strict=True)]
    vocab = model.cfg.vocab_size
    for i, (prompt, seq) in enumerate(zip(prompts, sequences, strict=True)):
        if len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty; prompts start with <bos>")
        if min(seq) < 0 or max(seq) >= vocab:
            raise ValueError(f"sequence {i} has token ids outside [0, {vocab - 1}]")
        if model.cfg.family == "gpt" and len(seq) > model.cfg.block_size:
            raise ValueError(
                f"prompt and completion {i} have {len(seq)} tokens; a gpt-family model with "
                f"block_size {model.cfg.block_size} scores at most that many"
            )
    out: list[list[float]] = [[] for _ in sequences]
    todo = [i for i, c in enumerate(completions) if len(c) > 0]
    padded = {i: _padded_length(len(sequences[i])) for i in todo}
    todo.sort(key=lambda i: (padded[i], i))
    device = next(model.parameters()).device
    weights = _weights(model, compute_dtype)
    with torch.inference_mode():
        start = 0
        while start < len(todo):
            P = padded[todo[start]]
            end = start
            while end < len(todo) and end - start < batch_size and padded[todo[end]] == P:
                end += 1
            rows = todo[start:end]
            start = end
            idx = torch.zeros(len(rows), P, dtype=torch.long, device=device)
            key_mask = torch.zeros(len(rows), P, dtype=torch.bool, device=device)
            for r, i in enumerate(rows):
                idx[r, P - len(sequences[i]) :] = torch.tensor(sequences[i], device=device)
                key_mask[r, P - len(sequences[i]) :] = True
            lengths = key_mask.sum(-1)
            positions = (torch.arange(P, device=device)[None] - (P - lengths)[:, None]).clamp(min=0)
            allowed = torch.ones(P, P, dtype=torch.bool, device=device).tril()[None]
            allowed = (allowed & key_mask[:, None, :]) | torch.eye(
                P, dtype=torch.bool, device=device
            )[None]
            cache = _Cache(model.cfg, len(rows), P, device=device)
            bias = _bias(allowed[:, None])
            rope = _rope_table(model, P, device)
            logits, _ = _forward(
                model, weights, compute_dtype, idx, positions, bias, cache, None, rope
            )
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            picked = logp.gather(-1, idx[:, 1:, None])[..., 0].cpu()
            for r, i in enumerate(rows):
                n = len(completions[i])
                out[i] = picked[r, P - 1 - n :].tolist()
    return out
