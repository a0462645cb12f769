"""A new distribution-only intervention needs no backend code: the proof, by registration.

A throwaway kind, ``sharpen(s)`` (divide the log-probs by s², a "temperature squared"), is
added the way docs/backends.md says a distribution-only kind is added: a ``Kind`` row with
``distribution_only=True``, a ``SamplingSpec`` field with its domain (here a subclass of
the spec, standing in for the new field), and its arithmetic after
``fixable.distribution.sampling_logprobs`` (here a wrapper of that function). Nothing in
``fixable.backends`` or ``fixable.organism`` is touched, yet the organism and hf backends
claim the kind, sample it, and draw exactly the tokens ``temperature(T=s²)`` draws — and
``fixable list``, ``check_backend`` and ``fixable sample`` take it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from fixable import distribution, interventions
from fixable.backends.base import GenerationRequest
from fixable.backends.organism import OrganismBackend
from fixable.cli.listing import list_lines
from fixable.interventions import RETRY, Intervention, Kind, SamplingSpec, domain
from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint
from fixable.testing import check_backend

PROMPTS = ["4821|a27 s13 m32|", "0000|x01|", "9|"]
S = 0.8  # sharpen(s=0.8) is temperature(T=0.64)


@dataclass(frozen=True)
class SharpenSpec(SamplingSpec):
    """``SamplingSpec`` with the new kind's field, as adding it to the class would give."""

    sharpen: float = field(default=1.0, metadata=domain(0, 10, open_lo=True))


def _with_sharpen(original):
    def sampling_logprobs(policy_lp, spec, ref_lp=None, early_lp=None):
        base = original(policy_lp, spec, ref_lp, early_lp)
        s = getattr(spec, "sharpen", 1.0)
        return base if s == 1 else torch.log_softmax(base / (s * s), dim=-1)

    return sampling_logprobs


@pytest.fixture
def sharpen(monkeypatch):
    """The kind registered for one test: the Kind row, the spec field, the arithmetic."""
    kind = Kind(
        "sharpen",
        "s",
        float,
        (0.2, 1.5),
        "divide the log-probs by s² (a test-only kind)",
        sets="sharpen",
        distribution_only=True,
        example=S,
    )
    monkeypatch.setitem(interventions.KINDS, kind.name, kind)
    monkeypatch.setitem(interventions.COST_FACTOR, kind.name, kind.cost_factor)
    monkeypatch.setattr(interventions, "SamplingSpec", SharpenSpec)
    monkeypatch.setattr(
        distribution, "sampling_logprobs", _with_sharpen(distribution.sampling_logprobs)
    )
    return kind


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = OrganismLM(ModelConfig(family="llama", n_layer=2, n_head=2, n_embd=32))
    with torch.no_grad():  # sharper than the init's near-uniform distributions
        model.embed_tokens.weight.mul_(6.0)
    return save_checkpoint(model, tmp_path_factory.mktemp("sharpen") / "policy")


def _requests() -> list[GenerationRequest]:
    return [
        GenerationRequest(p, seed=100 * i + j, max_tokens=20)
        for i, p in enumerate(PROMPTS)
        for j in range(3)
    ]


def _organism(model_dir):
    return OrganismBackend(str(model_dir), reference=None)


def _hf(model_dir, tmp_path):
    pytest.importorskip("transformers")
    from fixable.backends.hf import HFBackend
    from fixable.organism.export_hf import export_llama

    return HFBackend(export_llama(model_dir, tmp_path / "policy-hf"), device="cpu", batch_size=8)


@pytest.mark.parametrize("make", [_organism, _hf], ids=["organism", "hf"])
def test_a_registered_kind_samples_through_the_backend_untouched(
    sharpen, model_dir, tmp_path, make
):
    backend = make(model_dir) if make is _organism else make(model_dir, tmp_path)
    assert "sharpen" in type(backend).capabilities and "sharpen" in backend.capabilities
    reqs = _requests()
    got = backend.generate(reqs, Intervention("sharpen", S))
    same = backend.generate(reqs, Intervention("temperature", S * S))
    plain = backend.generate(reqs, RETRY)
    assert [g.token_ids for g in got] == [g.token_ids for g in same]
    assert [g.logprobs for g in got] == [g.logprobs for g in same]
    assert [g.entropies for g in got] == [g.entropies for g in same]
    assert [g.token_ids for g in got] != [g.token_ids for g in plain]  # it did something


def test_the_registered_kind_is_listed_checked_and_sampled_by_the_cli(
    sharpen, model_dir, tmp_path, capsys
):
    assert any(
        line.startswith("sharpen(s=…) s in [0.2, 1.5]") for line in list_lines("interventions")
    )
    organism_line = next(line for line in list_lines("backends") if line.startswith("organism"))
    assert "sharpen" in organism_line
    report = check_backend(_organism(model_dir), prompts=["1|", "2|"])
    assert "sharpen(s=0.8)" in report["checked"]

    from fixable.cli.main import main
    from fixable.store import Run

    run = tmp_path / "run"
    try:
        main(
            [
                "sample", "--model", str(model_dir), "--task", "chains", "--problems", "3",
                "--k", "2", "--r", "2", "--interventions", f"retry;sharpen:{S}",
                "--max-tokens", "12", "--out", str(run), "-q",
            ]
        )  # fmt: skip
    except SystemExit as e:
        assert e.code in (0, None), capsys.readouterr().err
    settings = {row["setting"] for row in Run(run).rollouts().to_pylist()}
    assert f"sharpen(s={S:g})" in settings


def test_without_the_row_the_kind_is_unknown_and_unclaimed():
    assert "sharpen" not in OrganismBackend.capabilities
    with pytest.raises(KeyError):
        Intervention("sharpen", S)


def test_engines_on_fixable_distribution_claim_every_distribution_only_kind():
    from fixable.backends.base import CHECKPOINT, DOLA, FULL_ENTROPY, MIX, SCORE, SEEDED
    from fixable.backends.hf import HFBackend
    from fixable.interventions import distribution_kinds

    machinery = {MIX, CHECKPOINT, DOLA, SCORE, FULL_ENTROPY}
    assert OrganismBackend.capabilities == distribution_kinds() | machinery | {SEEDED}
    assert HFBackend.capabilities == distribution_kinds() | machinery
