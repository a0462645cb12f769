"""The vllm backend (optional suite: needs vLLM, e.g. the CPU build in .venv-vllm made by
``bash benchmarks/vllm_setup.sh``; run ``.venv-vllm/bin/python -m pytest -m vllm tests/vllm``).

On a Llama-style organism exported to Hugging Face format, in fp32: teacher-forced
log-probs through ``prompt_logprobs`` equal the organism's within 1e-4; sampled tokens
carry the policy's own log-probs; the top-k entropy is flagged and never above the full
entropy; seeds reproduce; ``mix``/``dola`` are refused before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")
if not hasattr(vllm, "LLM"):  # this very folder, seen as a namespace package, is not vLLM
    pytest.skip("vllm is not installed (see benchmarks/vllm_setup.sh)", allow_module_level=True)

from fixable.backends.base import GenerationRequest  # noqa: E402
from fixable.errors import CapabilityError  # noqa: E402
from fixable.interventions import RETRY, Intervention  # noqa: E402
from test_backend_hf import PROMPTS, TOK, build_models, organism_logprobs  # noqa: E402

ENGINE = {"enforce_eager": True, "max_model_len": 96}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    # vLLM's CPU attention kernels need a head size it supports (32, 64, …; not 16)
    return build_models(tmp_path_factory.mktemp("vllm-models"), n_embd=64)


@pytest.fixture(scope="module")
def backend(models):
    from fixable.backends.vllm import VLLMBackend

    return VLLMBackend(
        models["policy_hf"],
        reference=models["reference_hf"],
        checkpoints={"step-2": models["step_hf"]},
        dtype="float32",
        top_logprobs=10,
        engine_options=ENGINE,
    )


@pytest.fixture(scope="module")
def hf(models):
    from fixable.backends.hf import HFBackend

    return HFBackend(models["policy_hf"], reference=models["reference_hf"])


def _requests(max_tokens=16, per_prompt=3):
    return [
        GenerationRequest(p, seed=500 + 11 * i + j, max_tokens=max_tokens)
        for i, p in enumerate(PROMPTS)
        for j in range(per_prompt)
    ]


def test_teacher_forced_logprobs_match_the_organism(backend, models):
    completions = [TOK.encode("a27=4891 s13", eos=True), TOK.encode("#0193"), [5]]
    for which in ("policy", "reference"):
        scored = backend.score(PROMPTS, completions, which=which)
        for p, c, got in zip(PROMPTS, completions, scored, strict=True):
            assert got == pytest.approx(organism_logprobs(models[which], p, c), abs=1e-4)


def test_samples_carry_policy_logprobs_and_a_flagged_entropy_bound(backend, hf):
    reqs = _requests()
    gens = backend.generate(reqs, RETRY)
    for req, gen in zip(reqs, gens, strict=True):
        assert gen.finish_reason in ("stop", "length") and 0 < len(gen.token_ids) <= 16
        assert gen.entropy_kind == "topk"
        rescored = hf.score([req.prompt], [gen.token_ids])[0]
        assert gen.policy_logprobs == pytest.approx(rescored, abs=1e-4)
        assert gen.logprobs == pytest.approx(gen.policy_logprobs, abs=1e-6)  # T=1
        ids = hf.encode_prompt(req.prompt) + gen.token_ids
        rows = hf.next_token_logprobs([ids])[0][len(ids) - len(gen.token_ids) - 1 :]
        full = -(rows.exp() * rows).sum(-1)
        for estimate, exact in zip(gen.entropies, full.tolist(), strict=True):
            assert estimate <= exact + 1e-4  # the tail bucket makes it a lower bound
    assert len({tuple(g.token_ids) for g in gens[:3]}) > 1


def test_seeds_reproduce_and_temperature_is_flagged(backend):
    reqs = _requests(max_tokens=12, per_prompt=2)
    first = backend.generate(reqs, RETRY)
    again = backend.generate(list(reversed(reqs)), RETRY)[::-1]
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    cold = backend.generate(reqs, Intervention("temperature", 0.5))
    assert all(g.meta["logprobs_kind"] == "topk" for g in cold)


@pytest.mark.parametrize("intervention", [Intervention("top_p", 0.6), Intervention("min_p", 0.2)])
def test_truncation_is_vllms_own_and_its_logprobs_are_renormalised(backend, intervention):
    reqs = _requests(max_tokens=12, per_prompt=2)
    gens = backend.generate(reqs, intervention)
    for g in gens:
        assert g.finish_reason in ("stop", "length") and g.meta["logprobs_kind"] == "topk"
        # at T=1 the truncated distribution is the policy's divided by the mass it keeps
        assert all(q >= p - 1e-6 for q, p in zip(g.logprobs, g.policy_logprobs, strict=True))


def test_checkpoint_is_a_second_engine(backend, models):
    from fixable.backends.vllm import VLLMBackend

    reqs = _requests(max_tokens=8, per_prompt=1)
    via_label = backend.generate(reqs, Intervention("checkpoint", "step-2"))
    alone = VLLMBackend(models["step_hf"], dtype="float32", engine_options=ENGINE)
    assert [g.token_ids for g in via_label] == [g.token_ids for g in alone.generate(reqs, RETRY)]


def test_mix_and_dola_are_refused(backend):
    for intervention in (Intervention("mix", 0.5), Intervention("dola", 1)):
        with pytest.raises(CapabilityError, match="hf"):
            backend.generate(_requests(4, 1), intervention)
