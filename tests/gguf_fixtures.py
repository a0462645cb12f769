"""A tiny Llama written as a GGUF file the way llama.cpp's converter writes one (rotary
query/key rows permuted, byte-level BPE vocabulary, control tokens, chat template), so
that the GGUF loader is tested without the 98 MB SmolLM2 download."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "a n", "Ġ a", "1 2"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _byte_alphabet() -> list[str]:
    """GPT-2's printable spelling of the 256 bytes, in byte order."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spelling = bytes_to_unicode()
    return [spelling[b] for b in range(256)]


def vocabulary() -> tuple[list[str], list[int]]:
    tokens = list(SPECIALS) + _byte_alphabet()
    for merge in MERGES:
        tokens.append(merge.replace(" ", ""))
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))  # 3 control, 1 normal
    return tokens, types


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's reordering of rotary query/key rows (transformers' loader undoes it)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def tiny_llama(seed: int = 0):
    """A random transformers LlamaForCausalLM sized to the tiny vocabulary (fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokens, _ = vocabulary()
    config = LlamaConfig(
        vocab_size=len(tokens),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharpen so that distributions are far from uniform
        model.lm_head.weight.mul_(20.0)
    return model


def write_gguf(model, path: Path) -> Path:
    """Write ``model`` (a tiny LlamaForCausalLM) and the tiny vocabulary as a GGUF file."""
    import gguf

    cfg = model.config
    tokens, types = vocabulary()
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("fixable tiny llama")
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(MERGES)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", state["model.embed_tokens.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        q = _permute(state[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        k = _permute(state[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        tensors = {
            "attn_norm": state[p + "input_layernorm.weight"],
            "attn_q": q,
            "attn_k": k,
            "attn_v": state[p + "self_attn.v_proj.weight"],
            "attn_output": state[p + "self_attn.o_proj.weight"],
            "ffn_norm": state[p + "post_attention_layernorm.weight"],
            "ffn_gate": state[p + "mlp.gate_proj.weight"],
            "ffn_up": state[p + "mlp.up_proj.weight"],
            "ffn_down": state[p + "mlp.down_proj.weight"],
        }
        for name, value in tensors.items():
            writer.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(value))
    writer.add_tensor("output_norm.weight", state["model.norm.weight"])
    writer.add_tensor("output.weight", state["lm_head.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_gsm8k(directory: Path, questions) -> Path:
    """A GSM8K-shaped data folder: ``questions`` ((question, answer) pairs) as both its train
    and test split."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in questions)
    for split in ("train", "test"):
        (directory / f"{split}.jsonl").write_text(lines)
    return directory
