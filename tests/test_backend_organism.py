"""The ``organism`` backend on a throwaway zoo of tiny random models: interventions map
onto the engine, seeds are batch-invariant, stop strings, scoring and refusals."""

from __future__ import annotations

import pytest
import torch

from fixable.backends.base import Backend, GenerationRequest
from fixable.backends.organism import OrganismBackend
from fixable.errors import CapabilityError, ConfigError, FixableError, UnknownNameError
from fixable.interventions import Intervention, parse_intervention
from fixable.organism.decode import decode
from fixable.organism.model import ModelConfig, OrganismLM, load_checkpoint, save_checkpoint
from fixable.organism.tokenizer import CharTokenizer
from fixable.registry import backends

TOKENIZER = CharTokenizer()
PROMPTS = ["4821|a27 s13 m32|", "0000|x01|", "9|", "1234|c02 n00 a11 m23 s01|"]


def tiny(seed: int) -> OrganismLM:
    torch.manual_seed(seed)
    model = OrganismLM(ModelConfig(family="llama", n_layer=2, n_head=4, n_embd=32))
    with torch.no_grad():  # sharper than the init's near-uniform distributions
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(3.0)
    return model.eval()


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    save_checkpoint(tiny(0), root / "llama-base")
    save_checkpoint(tiny(1), root / "llama-sft-s0")
    save_checkpoint(tiny(2), root / "llama-sft-s0" / "checkpoints" / "step-5")
    save_checkpoint(tiny(3), root / "loose")  # a directory, not a zoo name
    return root


@pytest.fixture(scope="module")
def backend(zoo_dir):
    return OrganismBackend("llama-sft-s0", zoo_dir=zoo_dir, batch_size=64)


def requests(n_per_prompt: int = 4, max_tokens: int = 20, stop=()) -> list[GenerationRequest]:
    return [
        GenerationRequest(p, seed=1000 * i + j, max_tokens=max_tokens, stop=stop)
        for i, p in enumerate(PROMPTS)
        for j in range(n_per_prompt)
    ]


def engine(model, reqs, **settings):
    ids = [TOKENIZER.encode(r.prompt, bos=True) for r in reqs]
    return decode(model, ids, [r.seed for r in reqs], max_new_tokens=reqs[0].max_tokens, **settings)


def test_registered_and_protocol(zoo_dir):
    b = backends.create("organism", "llama-sft-s0", zoo_dir=zoo_dir)
    assert isinstance(b, Backend) and b.name == "organism" and b.model_name == "llama-sft-s0"
    assert {"seeded", "full_entropy", "score", "mix", "dola", "checkpoint"} <= b.capabilities
    identity = b.identity()
    assert identity["reference"] == "llama-base" and "step-5" in identity["checkpoints"]


def test_reference_auto_is_the_family_base(backend, zoo_dir):
    base, _ = load_checkpoint(zoo_dir / "llama-base")
    reqs = requests()
    gens = backend.generate(reqs, Intervention("mix", 0.5))
    expected = engine(backend.model, reqs, reference=base, alpha=0.5)
    assert [g.token_ids for g in gens] == expected.token_ids


def test_no_reference_refuses_mix_before_sampling(zoo_dir):
    for b in (
        OrganismBackend("llama-base", zoo_dir=zoo_dir),  # a base has no reference
        OrganismBackend(str(zoo_dir / "loose"), zoo_dir=zoo_dir),  # a bare directory
        OrganismBackend("llama-sft-s0", reference=None, zoo_dir=zoo_dir),
    ):
        assert "mix" not in b.capabilities
        with pytest.raises(CapabilityError, match="cannot do mix; backends that can: .*hf"):
            b.generate(requests(1), Intervention("mix", 0.5))
        with pytest.raises(CapabilityError, match="reference=NAME"):
            b.score(PROMPTS[:1], [[5, 6]], which="reference")
    given = OrganismBackend(str(zoo_dir / "loose"), reference="llama-base", zoo_dir=zoo_dir)
    assert "mix" in given.capabilities


@pytest.mark.parametrize(
    "label, settings",
    [
        ("retry", {}),
        ("temperature(T=0.5)", {"temperature": 0.5}),
        ("dola(layer=1)", {"dola_layer": 1}),
        ("top_p(p=0.8)", {"top_p": 0.8}),
        ("min_p(p=0.2)", {"min_p": 0.2}),
    ],
)
def test_interventions_map_onto_the_engine(backend, label, settings):
    reqs = requests()
    gens = backend.generate(reqs, parse_intervention(label))
    expected = engine(backend.model, reqs, **settings)
    assert [g.token_ids for g in gens] == expected.token_ids
    assert [g.logprobs for g in gens] == expected.logprobs
    for g in gens:
        assert g.text == TOKENIZER.decode(g.token_ids)
        assert g.entropy_kind == "full" and g.finish_reason in ("stop", "length")
        assert len(g.entropies) == len(g.policy_logprobs) == len(g.token_ids) <= 20


@pytest.mark.parametrize("label", ["top_p(p=0.6)", "min_p(p=0.3)"])
def test_truncation_samples_only_the_kept_tokens(backend, label):
    """At T=1 a truncated distribution is the policy's renormalised over the kept tokens:
    every sampled token's log-prob is its policy log-prob plus the same row-and-step
    constant -log(kept mass) >= 0, larger than 0 where the cut removed anything; and a
    rollout does not depend on its batch."""
    reqs = requests()
    retry = backend.generate(reqs, Intervention("retry"))
    cut = backend.generate(reqs, parse_intervention(label))
    gaps = [lp - plp for g in cut for lp, plp in zip(g.logprobs, g.policy_logprobs, strict=True)]
    assert min(gaps) >= -1e-6 and max(gaps) > 0.05
    assert [g.token_ids for g in cut] != [g.token_ids for g in retry]
    alone = backend.generate([reqs[5]], parse_intervention(label))[0]
    assert alone.token_ids == cut[5].token_ids and alone.logprobs == cut[5].logprobs


def test_checkpoint_by_label_or_directory(backend, zoo_dir):
    ckpt, _ = load_checkpoint(zoo_dir / "llama-sft-s0" / "checkpoints" / "step-5")
    reqs = requests(2)
    expected = engine(ckpt, reqs).token_ids
    by_label = backend.generate(reqs, Intervention("checkpoint", "step-5"))
    by_dir = backend.generate(
        reqs, Intervention("checkpoint", str(zoo_dir / "llama-sft-s0" / "checkpoints" / "step-5"))
    )
    assert [g.token_ids for g in by_label] == [g.token_ids for g in by_dir] == expected
    assert expected != [g.token_ids for g in backend.generate(reqs, Intervention("retry"))]
    with pytest.raises(UnknownNameError, match="step-5"):
        backend.generate(reqs, Intervention("checkpoint", "step-6"))
    # symbolic: the earliest / latest checkpoint of the model's own run (only step-5 here)
    first = backend.generate(reqs, Intervention("checkpoint", "first"))
    assert [g.token_ids for g in first] == expected
    loose = OrganismBackend(str(zoo_dir / "loose"), reference=None, zoo_dir=zoo_dir)
    with pytest.raises(ConfigError, match="no intermediate checkpoints"):
        loose.generate(reqs, Intervention("checkpoint", "last"))


def test_dola_layer_is_checked_against_the_model(backend):
    with pytest.raises(ConfigError, match=r"dola layer must be in \[0, 1\].*got 2"):
        backend.generate(requests(1), Intervention("dola", 2))


def test_a_rollout_does_not_depend_on_its_batch(backend):
    reqs = requests(8)
    together = backend.generate(reqs, Intervention("temperature", 1.3))
    for k in (0, 9, 31):
        alone = backend.generate([reqs[k]], Intervention("temperature", 1.3))[0]
        assert alone.token_ids == together[k].token_ids
        assert alone.logprobs == together[k].logprobs


def test_stop_strings_cut_text_and_tokens(backend):
    plain = backend.generate(requests(4, max_tokens=30), Intervention("retry"))
    row = next(k for k, g in enumerate(plain) if len(g.text) >= 8)
    stop = plain[row].text[4:6]
    at = plain[row].text.find(stop)
    cut = backend.generate(
        [requests(4, max_tokens=30, stop=(stop, "never"))[row]], Intervention("retry")
    )[0]
    assert cut.text == plain[row].text[:at] and cut.finish_reason == "stop"
    assert cut.token_ids == plain[row].token_ids[: at + len(stop)]
    assert len(cut.logprobs) == len(cut.entropies) == len(cut.token_ids)


def test_token_limits_per_request_and_cap(zoo_dir):
    capped = OrganismBackend("llama-sft-s0", zoo_dir=zoo_dir, max_tokens=6)
    reqs = [
        GenerationRequest(PROMPTS[0], seed=s, max_tokens=m) for s, m in [(1, 3), (2, 50), (3, 0)]
    ]
    lengths = [len(g.token_ids) for g in capped.generate(reqs, Intervention("retry"))]
    assert lengths[0] <= 3 and lengths[1] <= 6 and lengths[2] == 0


def test_unreadable_prompt_fails_its_row_only(backend):
    reqs = [GenerationRequest("4821|a27|", 1), GenerationRequest("Ünïcode?", 2)]
    good, bad = backend.generate(reqs, Intervention("retry"))
    assert good.finish_reason in ("stop", "length") and good.token_ids
    assert bad.finish_reason == "error" and "alphabet" in bad.error


def test_scores_match_the_sampled_policy_logprobs(backend, zoo_dir):
    gens = backend.generate(requests(2), Intervention("temperature", 0.7))
    prompts = [r.prompt for r in requests(2)]
    scored = backend.score(prompts, [g.token_ids for g in gens])
    for g, s in zip(gens, scored, strict=True):
        assert s == pytest.approx(g.policy_logprobs, abs=1e-5)
    # reference scores are the base model's, and do not depend on the batch
    ref = backend.score(prompts, [g.token_ids for g in gens], which="reference")
    alone = backend.score(prompts[3:4], [gens[3].token_ids], which="reference")
    assert alone[0] == ref[3]
    base, _ = load_checkpoint(zoo_dir / "llama-base")
    ids = TOKENIZER.encode(prompts[3], bos=True) + gens[3].token_ids
    with torch.no_grad():
        logp = torch.log_softmax(base(torch.tensor([ids]))[0, :-1], -1)
    direct = logp[len(ids) - len(gens[3].token_ids) - 1 :].gather(
        -1, torch.tensor(gens[3].token_ids)[:, None]
    )[:, 0]
    assert ref[3] == pytest.approx(direct.tolist(), abs=1e-5)
    assert backend.score(["9|"], [[]]) == [[]]


def test_score_rejects_bad_arguments(backend):
    with pytest.raises(ConfigError, match="which must be"):
        backend.score(PROMPTS[:1], [[5]], which="base")
    with pytest.raises(ConfigError, match="2 prompts but 1 completions"):
        backend.score(PROMPTS[:2], [[5]])


def test_bad_construction_names_the_fix(zoo_dir):
    with pytest.raises(FixableError, match="Unknown zoo model 'llama-sft-s9'"):
        OrganismBackend("llama-sft-s9", zoo_dir=zoo_dir)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        OrganismBackend("llama-base", zoo_dir=zoo_dir, batch_size=0)
    with pytest.raises(ConfigError, match="device"):
        OrganismBackend("llama-base", zoo_dir=zoo_dir, device="tpu")


@pytest.mark.parametrize("settings", [{"top_p": 0.0}, {"top_p": 1.5}, {"min_p": 1.0}])
def test_the_engine_refuses_truncation_out_of_range(backend, settings):
    with pytest.raises(ValueError, match="top_p must be in|min_p must be in"):
        engine(backend.model, requests(1), **settings)
