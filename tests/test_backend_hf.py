"""The hf backend on a Llama-style organism exported to Hugging Face format: the same
teacher-forced log-probs as the organism (within 1e-4, fp32), the same tokens for the
same seeds under every intervention, and its own contract (stops, limits, capabilities)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fixable.backends.base import GenerationRequest
from fixable.errors import CapabilityError, ConfigError, UnknownNameError
from fixable.interventions import RETRY, Intervention
from fixable.organism.decode import decode
from fixable.organism.model import ModelConfig, OrganismLM, load_checkpoint, save_checkpoint
from fixable.organism.tokenizer import CharTokenizer

transformers = pytest.importorskip("transformers")

TOK = CharTokenizer()
PROMPTS = ["4821|a27 s13 m32|", "0193|c12|", "7777|x01 a35 s02 n00|"]


def export(checkpoint: Path, out: Path) -> Path:
    from fixable.organism.export_hf import export_llama

    export_llama(checkpoint, out)
    return out


def build_models(root: Path, n_embd: int = 32) -> dict[str, Path]:
    """A tiny random llama policy, a reference and an intermediate checkpoint, each as an
    organism checkpoint and as an exported Hugging Face directory (2 heads of n_embd/2)."""
    cfg = ModelConfig(family="llama", n_layer=3, n_head=2, n_embd=n_embd, block_size=96)
    paths = {}
    for name, seed in (("policy", 0), ("reference", 1), ("step", 2)):
        torch.manual_seed(seed)
        model = OrganismLM(cfg)
        # sharpen the head so that distributions are far from uniform (as a trained model's)
        with torch.no_grad():
            model.embed_tokens.weight.mul_(6.0)
        paths[name] = save_checkpoint(model, root / name)
        paths[f"{name}_hf"] = export(paths[name], root / f"{name}-hf")
    return paths


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return build_models(tmp_path_factory.mktemp("hf-models"))


@pytest.fixture(scope="module")
def backend(models):
    from fixable.backends.hf import HFBackend

    return HFBackend(
        models["policy_hf"],
        reference=models["reference_hf"],
        checkpoints={"step-2": models["step_hf"]},
        batch_size=8,
    )


def organism_logprobs(checkpoint: Path, prompt: str, completion: list[int]) -> list[float]:
    model, _ = load_checkpoint(checkpoint)
    ids = TOK.encode(prompt, bos=True) + completion
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids]))[0].float(), -1)
    start = len(ids) - len(completion)
    return [float(logp[start + k - 1, t]) for k, t in enumerate(completion)]


def requests(max_tokens: int = 24, per_prompt: int = 3) -> list[GenerationRequest]:
    return [
        GenerationRequest(p, seed=1000 + 17 * i + j, max_tokens=max_tokens)
        for i, p in enumerate(PROMPTS)
        for j in range(per_prompt)
    ]


def test_prompt_encoding_matches_the_organism(backend):
    for p in PROMPTS:
        assert backend.encode_prompt(p) == TOK.encode(p, bos=True)


def test_teacher_forced_logprobs_match_the_organism(backend, models):
    completions = [TOK.encode("a27=4891 s13", eos=True), TOK.encode("#0193"), [5]]
    for which, ckpt in (("policy", models["policy"]), ("reference", models["reference"])):
        scored = backend.score(PROMPTS, completions, which=which)
        for p, c, got in zip(PROMPTS, completions, scored, strict=True):
            assert got == pytest.approx(organism_logprobs(ckpt, p, c), abs=1e-4)
    assert backend.score(PROMPTS[:1], [[]]) == [[]]


@pytest.mark.parametrize(
    "intervention, options",
    [
        (RETRY, {}),
        (Intervention("temperature", 0.5), {"temperature": 0.5}),
        (Intervention("temperature", 1.6), {"temperature": 1.6}),
        (Intervention("mix", 0.5), {"alpha": 0.5, "reference": "reference"}),
        (Intervention("dola", 1), {"dola_layer": 1}),
        (Intervention("top_p", 0.7), {"top_p": 0.7}),
        (Intervention("min_p", 0.02), {"min_p": 0.02}),
    ],
)
def test_same_seeds_same_tokens_as_the_organism_engine(backend, models, intervention, options):
    policy, _ = load_checkpoint(models["policy"])
    if "reference" in options:
        options = {**options, "reference": load_checkpoint(models["reference"])[0]}
    reqs = requests()
    gens = backend.generate(reqs, intervention)
    ref = decode(
        policy,
        [TOK.encode(r.prompt, bos=True) for r in reqs],
        [r.seed for r in reqs],
        max_new_tokens=24,
        **options,
    )
    for i, g in enumerate(gens):
        assert g.token_ids == ref.token_ids[i]
        assert g.finish_reason == ref.finish_reasons[i]
        assert g.logprobs == pytest.approx(ref.logprobs[i], abs=1e-4)
        assert g.entropies == pytest.approx(ref.entropies[i], abs=1e-4)
        assert g.policy_logprobs == pytest.approx(ref.policy_logprobs[i], abs=1e-4)
        assert g.entropy_kind == "full"
        assert g.text == TOK.decode(g.token_ids)
    if intervention.kind != "dola":  # DoLa's plausibility set is often one token here
        # different seeds of one prompt do differ (the noise is really per row)
        assert len({tuple(g.token_ids) for g in gens[:3]}) > 1


def test_checkpoint_samples_the_checkpoint(backend, models):
    from fixable.backends.hf import HFBackend

    reqs = requests(max_tokens=12, per_prompt=2)
    via_label = backend.generate(reqs, Intervention("checkpoint", "step-2"))
    direct = HFBackend(models["step_hf"]).generate(reqs, RETRY)
    assert [g.token_ids for g in via_label] == [g.token_ids for g in direct]
    via_dir = backend.generate(reqs, Intervention("checkpoint", str(models["step_hf"])))
    assert [g.token_ids for g in via_dir] == [g.token_ids for g in direct]
    with pytest.raises(UnknownNameError, match="step-9"):
        backend.generate(reqs, Intervention("checkpoint", "step-9"))
    # symbolic: the earliest and latest labelled checkpoint (only step-2 here)
    for symbolic in ("first", "last"):
        got = backend.generate(reqs, Intervention("checkpoint", symbolic))
        assert [g.token_ids for g in got] == [g.token_ids for g in direct]


def test_batch_composition_does_not_change_a_rows_tokens(backend):
    reqs = requests(max_tokens=20, per_prompt=4)
    together = backend.generate(reqs, RETRY)
    alone = [backend.generate([r], RETRY)[0] for r in reqs[::5]]
    assert [g.token_ids for g in alone] == [g.token_ids for g in together[::5]]
    shuffled = list(reversed(reqs))
    again = backend.generate(shuffled, RETRY)[::-1]
    assert [g.token_ids for g in again] == [g.token_ids for g in together]


def test_per_request_limits_and_stop_strings(backend):
    base = backend.generate([GenerationRequest(PROMPTS[0], seed=5, max_tokens=30)], RETRY)[0]
    stop_char = base.text[6]
    cut = base.text.index(stop_char)
    reqs = [
        GenerationRequest(PROMPTS[0], seed=5, max_tokens=4),
        GenerationRequest(PROMPTS[0], seed=5, max_tokens=30, stop=(stop_char,)),
    ]
    short, stopped = backend.generate(reqs, RETRY)
    assert short.token_ids == base.token_ids[:4] and short.finish_reason == "length"
    assert stopped.finish_reason == "stop"
    assert stopped.text == base.text[:cut]
    assert stopped.token_ids == base.token_ids[: cut + 1]  # through the token that stopped it
    # a stop string of several tokens, found late in a long text (the check decodes only a
    # tail window, so the window must still see every token of the string)
    long_base = backend.generate([GenerationRequest(PROMPTS[0], seed=5, max_tokens=120)], RETRY)[0]
    stop = long_base.text[60:63]
    first = long_base.text.index(stop)
    multi = backend.generate(
        [GenerationRequest(PROMPTS[0], seed=5, max_tokens=120, stop=(stop, "never-seen"))],
        RETRY,
    )[0]
    assert multi.finish_reason == "stop"
    assert multi.text == long_base.text[:first]
    ids = multi.token_ids
    assert ids == long_base.token_ids[: len(ids)]  # stopped at the token that completed it
    decode = backend.tokenizer.decode
    assert stop in decode(ids, skip_special_tokens=True)
    assert stop not in decode(ids[:-1], skip_special_tokens=True)


def test_capabilities_and_validation(backend, models):
    from fixable.backends.hf import HFBackend

    plain = HFBackend(models["policy_hf"])
    assert "mix" not in plain.capabilities and "mix" in backend.capabilities
    with pytest.raises(CapabilityError, match="mix"):
        plain.generate(requests(4, 1), Intervention("mix", 0.5))
    with pytest.raises(CapabilityError, match="reference"):
        plain.score(PROMPTS, [[5]] * 3, which="reference")
    with pytest.raises(ConfigError, match=r"\[0, 2\]"):
        backend.generate(requests(4, 1), Intervention("dola", 3))
    with pytest.raises(ConfigError, match="dtype"):
        HFBackend(models["policy_hf"], dtype="float64")
    with pytest.raises(ConfigError, match="no-such-model"):
        HFBackend("/nonexistent/no-such-model")
    identity = backend.identity()
    assert identity["policy"]["weights_sha256"] and identity["reference"]["source"]


def test_chat_template_wraps_the_prompt(models, tmp_path):
    from fixable.backends.hf import HFBackend

    directory = Path(shutil.copytree(models["policy_hf"], tmp_path / "chat"))
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = (
        "{{ bos_token }}{% for m in messages %}{{ m['content'] }}|{% endfor %}"
    )
    config_path.write_text(json.dumps(config))
    chat = HFBackend(directory, chat_template=True)
    assert chat.encode_prompt("0193") == TOK.encode("0193|", bos=True)
    with pytest.raises(ConfigError, match="chat template"):
        HFBackend(models["policy_hf"], chat_template=True).encode_prompt("0193")
