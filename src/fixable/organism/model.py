"""The organism's two transformer families, flat and readable top to bottom.

* ``gpt``: LayerNorm, GELU MLP, learned absolute positions, biases (GPT-2 style).
* ``llama``: RMSNorm, SwiGLU MLP, rotary position embeddings, no biases (Llama style,
  laid out so that it exports weight-for-weight to ``LlamaForCausalLM``).

Both take explicit per-row ``positions`` and a ``key_mask`` so that left-padded batches and
a KV cache work the same way for every row, and both can return the residual stream after
every layer, which layer-contrast (DoLa) decoding reads through the shared head.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    family: str = "llama"  # "gpt" or "llama"
    vocab_size: int = 53  # size of the organism's CharTokenizer
    block_size: int = 192  # longest sequence (prompt + completion) the model is trained on
    n_layer: int = 4  # transformer blocks
    n_head: int = 4  # attention heads (head_dim = n_embd // n_head)
    n_embd: int = 128  # residual stream width
    mlp_hidden: int = 0  # MLP hidden width; 0 = 4*n_embd (gpt) or 8/3*n_embd rounded to 32 (llama)
    rope_theta: float = 10000.0  # rotary base (llama only)
    norm_eps: float = 1e-5  # LayerNorm / RMSNorm epsilon
    tie_embeddings: bool = True  # the output head shares the token embedding matrix

    def __post_init__(self):
        if self.family not in ("gpt", "llama"):
            raise ValueError(f"family must be 'gpt' or 'llama', got {self.family!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not self.mlp_hidden:
            if self.family == "gpt":
                self.mlp_hidden = 4 * self.n_embd
            else:
                self.mlp_hidden = 32 * math.ceil(8 * self.n_embd / 3 / 32)

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class KVCache:
    """Preallocated keys and values of every layer for a batch; ``length`` slots are filled."""

    def __init__(
        self, cfg: ModelConfig, batch: int, max_len: int, dtype=torch.float32, device="cpu"
    ):
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def select(self, rows: torch.Tensor) -> KVCache:
        """A cache holding only ``rows`` (indices or a bool mask) — to drop finished rows or
        to fan one prefilled prompt out to many samples (``rows`` with repeats)."""
        out = KVCache.__new__(KVCache)
        out.k, out.v, out.length = self.k[:, rows], self.v[:, rows], self.length
        return out


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        bias = cfg.family == "gpt"
        self.q_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.k_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.v_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)
        self.o_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=bias)

    def forward(self, x, rope, mask, cache: KVCache | None, layer: int):
        B, T, C = x.shape
        H, D = self.cfg.n_head, self.cfg.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H, D).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)
        if rope is not None:
            cos, sin = rope
            q = q * cos + rotate_half(q) * sin
            k = k * cos + rotate_half(k) * sin
        if cache is not None:
            start = cache.length
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]
            v = cache.v[layer, :, :, : start + T]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.family = cfg.family
        if cfg.family == "gpt":
            self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden)
            self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd)
        else:
            self.gate_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
            self.up_proj = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
            self.down_proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x):
        if self.family == "gpt":
            return self.down_proj(F.gelu(self.up_proj(x)))
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        Norm = (
            (lambda d: nn.LayerNorm(d, eps=cfg.norm_eps))
            if cfg.family == "gpt"
            else (lambda d: RMSNorm(d, cfg.norm_eps))
        )
        self.input_layernorm = Norm(cfg.n_embd)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = Norm(cfg.n_embd)
        self.mlp = MLP(cfg)

    def forward(self, x, rope, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), rope, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class OrganismLM(nn.Module):
    """A small causal language model of either family."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        if cfg.family == "gpt":
            self.embed_positions = nn.Embedding(cfg.block_size, cfg.n_embd)
            self.norm = nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps)
        else:
            self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
            inv_freq = 1.0 / (
                cfg.rope_theta
                ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim)
            )
            self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):  # GPT-2 scaled residual init
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from a residual-stream state (final norm, then the shared output head)."""
        return self.lm_head(self.norm(hidden))

    def forward(
        self,
        idx: torch.Tensor,
        *,
        positions: torch.Tensor | None = None,
        key_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden: bool = False,
    ):
        """Logits for every position of ``idx`` (B, T).

        Args:
            positions: (B, T) position ids; default ``cache.length + arange(T)``.
            key_mask: (B, S) bool, True for real (non-padding) tokens over all
                ``S = cache.length + T`` keys; default all real.
            cache: a KVCache to read past keys from and write the new ones to.
            output_hidden: also return the residual stream after the embeddings and after
                every block (a list of n_layer + 1 tensors of shape (B, T, n_embd)).
        """
        B, T = idx.shape
        past = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(past, past + T, device=idx.device).expand(B, T)
        x = self.embed_tokens(idx)
        rope = None
        if self.cfg.family == "gpt":
            x = x + self.embed_positions(positions)
        else:
            freqs = positions[..., None].float() * self.inv_freq  # (B, T, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, T, D)
            rope = (emb.cos().to(x.dtype), emb.sin().to(x.dtype))
        S = past + T
        causal = torch.ones(T, S, dtype=torch.bool, device=idx.device).tril(diagonal=past)
        mask = causal[None, None]
        if key_mask is not None:
            mask = mask & key_mask[:, None, None, :S]
        hidden = [x] if output_hidden else None
        for i, block in enumerate(self.layers):
            x = block(x, rope, mask, cache, i)
            if output_hidden:
                hidden.append(x)
        if cache is not None:
            cache.length += T
        logits = self.head(x)
        return (logits, hidden) if output_hidden else logits


def save_checkpoint(
    model: OrganismLM,
    directory: str | Path,
    meta: dict | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (which rebuilds the model) to ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().to(dtype).contiguous()
        for k, v in model.state_dict().items()
        if not (model.cfg.tie_embeddings and k == "lm_head.weight")
    }
    save_file(state, str(directory / "model.safetensors"))
    config = {"format": "fixable-organism/1", "model": asdict(model.cfg), "meta": meta or {}}
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    return directory


def load_checkpoint(directory: str | Path, device: str = "cpu") -> tuple[OrganismLM, dict]:
    """Rebuild a model from a checkpoint directory; weights are upcast to fp32."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text())
    model = OrganismLM(ModelConfig.from_dict(config["model"]))
    state = {k: v.float() for k, v in load_file(str(directory / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (model.cfg.tie_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {directory} does not match its config: "
            f"missing {missing}, unexpected {unexpected}"
        )
    return model.to(device).eval(), config.get("meta", {})
