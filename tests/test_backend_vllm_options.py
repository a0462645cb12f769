"""The vllm backend's engine arguments, checked without vLLM (a stand-in module records
what ``vllm.LLM`` would be given). The real engine runs in the optional ``vllm`` suite."""

from __future__ import annotations

import sys
import types

import pytest

from fixable.backends import vllm as vllm_backend


def fake_vllm(monkeypatch, cpu: bool) -> list[dict]:
    built: list[dict] = []

    class LLM:
        def __init__(self, model, **kwargs):
            built.append({"model": model, **kwargs})

        def get_tokenizer(self):
            return None

    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.__version__ = "0.0-fake"
    platforms = types.ModuleType("vllm.platforms")
    platforms.current_platform = types.SimpleNamespace(is_cpu=lambda: cpu)
    module.platforms = platforms
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.platforms", platforms)
    return built


def test_chunked_prefill_is_off_on_the_cpu_platform(monkeypatch):
    built = fake_vllm(monkeypatch, cpu=True)
    backend = vllm_backend.VLLMBackend("some/model")
    assert built[0]["enable_chunked_prefill"] is False
    assert built[0]["logprobs_mode"] == "raw_logprobs" and built[0]["max_logprobs"] == 20
    assert backend.identity()["engine_options"]["enable_chunked_prefill"] is False


def test_chunked_prefill_is_left_to_vllm_on_a_gpu(monkeypatch):
    built = fake_vllm(monkeypatch, cpu=False)
    vllm_backend.VLLMBackend("some/model", engine_options={"max_model_len": 512})
    assert "enable_chunked_prefill" not in built[0] and built[0]["max_model_len"] == 512


def test_an_explicit_choice_wins_with_a_warning(monkeypatch, caplog):
    options = vllm_backend.build_engine_options(
        dtype="auto",
        gpu_memory_utilization=0.4,
        enable_prefix_caching=True,
        top_logprobs=5,
        cpu=True,
        extra={"enable_chunked_prefill": True},
    )
    assert options["enable_chunked_prefill"] is True
    assert "CPU Generator does not use offset" in caplog.text


@pytest.mark.parametrize("cpu", [True, False])
def test_the_platform_is_read_from_vllm(monkeypatch, cpu):
    fake_vllm(monkeypatch, cpu=cpu)
    import vllm

    assert vllm_backend.on_cpu(vllm) is cpu
