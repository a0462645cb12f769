"""Export a Llama-family organism checkpoint to a Hugging Face ``LlamaForCausalLM`` directory.

The organism's llama family is laid out weight-for-weight like ``LlamaForCausalLM``
(RMSNorm, SwiGLU, rotary embeddings in the rotate-half convention, no biases), so the
export renames tensors and writes a config; the same weights then run under transformers
and vLLM. The tokenizer is the organism's ``CharTokenizer`` rebuilt with the ``tokenizers``
library: a WordLevel model over its exact vocabulary, a pre-tokenizer that isolates every
character, a Fuse decoder that concatenates tokens back, ``<bos>`` prepended by the
post-processor, and bos / eos / pad set, saved as a ``PreTrainedTokenizerFast``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from fixable.errors import ConfigError
from fixable.organism.model import load_checkpoint
from fixable.organism.tokenizer import SPECIALS, CharTokenizer

log = logging.getLogger(__name__)


def hf_tokenizer(tokenizer: CharTokenizer | None = None):
    """The organism's tokenizer as a ``transformers.PreTrainedTokenizerFast``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = tokenizer or CharTokenizer()
    pad, bos, eos = (tok.itos[i] for i in (tok.pad_id, tok.bos_id, tok.eos_id))
    # no unknown token exists in the organism; mapping an unknown character to <pad> keeps
    # the WordLevel model total without inventing an id the models were never trained on
    core = Tokenizer(models.WordLevel(vocab=dict(tok.stoi), unk_token=pad))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIALS))
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=pad,
        add_bos_token=True,  # read by fixable's hf backend: prompts start with <bos>
        clean_up_tokenization_spaces=False,  # spaces are real characters of the task
        model_max_length=4096,
    )


def llama_config(cfg) -> dict:
    """The ``LlamaConfig`` fields of an organism ``ModelConfig``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.n_embd,
        "intermediate_size": cfg.mlp_hidden,
        "num_hidden_layers": cfg.n_layer,
        "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.block_size,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }


def export_llama(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a ``LlamaForCausalLM`` directory (config, fp32 safetensors, tokenizer) to ``out_dir``.

    Raises ``ConfigError`` for a gpt-family checkpoint (learned positions, LayerNorm and
    biases have no ``LlamaForCausalLM`` equivalent)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    model, meta = load_checkpoint(checkpoint_dir)
    cfg = model.cfg
    if cfg.family != "llama":
        raise ConfigError(
            f"only llama-family models export to LlamaForCausalLM; "
            f"{checkpoint_dir} is {cfg.family!r}"
        )
    state = {f"model.{k}": v for k, v in model.state_dict().items() if not k.startswith("lm_head")}
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = model.lm_head.weight
    hf = LlamaForCausalLM(LlamaConfig(**llama_config(cfg)))
    missing, unexpected = hf.load_state_dict(state, strict=False)
    missing = [
        k
        for k in missing
        if not (cfg.tie_embeddings and k == "lm_head.weight") and "rotary_emb" not in k
    ]
    if missing or unexpected:
        raise ValueError(f"export of {checkpoint_dir}: missing {missing}, unexpected {unexpected}")
    if cfg.tie_embeddings:
        hf.tie_weights()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf.to(torch.float32).save_pretrained(out, safe_serialization=True)
    hf_tokenizer().save_pretrained(out)
    (out / "fixable_organism.json").write_text(
        json.dumps(
            {"source": str(checkpoint_dir), "meta": meta}, indent=1, sort_keys=True, default=str
        )
    )
    log.info("exported %s to %s", checkpoint_dir, out)
    return out
