"""Export of Llama-family organisms to ``LlamaForCausalLM``: teacher-forced log-probs equal
the organism's within 1e-4 (fp32), and the tokenizer reproduces ``CharTokenizer`` exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fixable.errors import ConfigError
from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint
from fixable.organism.tokenizer import ALPHABET, CharTokenizer

transformers = pytest.importorskip("transformers")

TOK = CharTokenizer()
TEXTS = ["4821|a27 s13 m32|a27=4891 s13=4198 m32=4196#4196", "0193|c12 h45|", " :,.-+*()[]z"]


def export(tmp_path: Path, cfg: ModelConfig, seed: int = 0) -> tuple[OrganismLM, Path]:
    from fixable.organism.export_hf import export_llama

    torch.manual_seed(seed)
    model = OrganismLM(cfg)
    with torch.no_grad():  # sharpen, so that log-probs are far from uniform, as a trained model's
        model.embed_tokens.weight.mul_(8.0)
    ckpt = save_checkpoint(model, tmp_path / "organism")
    return model.eval(), export_llama(ckpt, tmp_path / "hf")


@pytest.mark.parametrize("tie", [True, False])
def test_exported_logprobs_match_the_organism(tmp_path, tie):
    cfg = ModelConfig(
        family="llama", n_layer=2, n_embd=32, n_head=4, block_size=96, tie_embeddings=tie
    )
    model, out = export(tmp_path, cfg)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = torch.tensor([TOK.encode(TEXTS[0], bos=True)])
    with torch.no_grad():
        ours = torch.log_softmax(model(ids).float(), -1)
        theirs = torch.log_softmax(hf(ids).logits.float(), -1)
    assert (ours - theirs).abs().max().item() < 1e-4
    # left-padded batch with an attention mask: still the same per real token
    short = TOK.encode(TEXTS[1], bos=True)
    pad = ids.shape[1] - len(short)
    batch = torch.tensor([[0] * pad + short, ids[0].tolist()])
    mask = (torch.arange(ids.shape[1])[None] >= torch.tensor([[pad], [0]])).long()
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        theirs = torch.log_softmax(
            hf(batch, attention_mask=mask, position_ids=positions).logits.float(), -1
        )
        ours_short = torch.log_softmax(model(torch.tensor([short])).float(), -1)
    assert (theirs[0, pad:] - ours_short[0]).abs().max().item() < 1e-4


def test_exported_tokenizer_is_the_char_tokenizer(tmp_path):
    _, out = export(tmp_path, ModelConfig(family="llama", n_layer=1, n_embd=16, n_head=2))
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 0)
    assert len(tok) == TOK.vocab_size
    for text in [*TEXTS, ALPHABET]:
        ids = tok(text)["input_ids"]
        assert ids == TOK.encode(text, bos=True)
        assert tok.decode(ids, skip_special_tokens=True) == text
    assert tok.decode(TOK.encode("12#", eos=True)) == "12#<eos>"


def test_gpt_family_refuses_with_a_reason(tmp_path):
    from fixable.organism.export_hf import export_llama

    ckpt = save_checkpoint(
        OrganismLM(ModelConfig(family="gpt", n_layer=1, n_embd=16, n_head=2)), tmp_path / "gpt"
    )
    with pytest.raises(ConfigError, match="llama"):
        export_llama(ckpt, tmp_path / "out")


def test_cli_export_of_a_zoo_model(tmp_path):
    from click.testing import CliRunner

    from fixable.cli.zoo import command
    from fixable.organism import zoo

    names = [n for n in zoo.list_models(include_micro=True) if n.startswith("llama")]
    if not names:
        pytest.skip("no llama model in the zoo")
    result = CliRunner().invoke(command, ["export", names[0], str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "config.json").exists()
    assert (tmp_path / "out" / "tokenizer.json").exists()
