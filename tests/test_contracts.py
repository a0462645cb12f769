"""Every built-in backend and task keeps the contract of ``fixable.testing``, and so does a
third-party plug-in installed beside fixable and discovered through its entry points.

The checks themselves are tested too: a backend that breaks one promise at a time is
caught with a message naming it.
"""

from __future__ import annotations

import sys
import textwrap
from dataclasses import replace

import pytest

import test_backend_organism
from fixable.backends.base import Generation
from fixable.backends.organism import OrganismBackend
from fixable.registry import backends, tasks
from fixable.testing import ContractError, check_backend, check_task

ORGANISM_PROMPTS = ["4821|a27 s13|", "0000|x01|"]
zoo_dir = test_backend_organism.zoo_dir  # the same throwaway zoo of tiny models (a fixture)


@pytest.fixture(scope="module")
def organism(zoo_dir):
    return OrganismBackend("llama-sft-s0", zoo_dir=zoo_dir, batch_size=16)


def test_organism_backend_keeps_the_contract(organism):
    report = check_backend(
        organism, ORGANISM_PROMPTS, checkpoint="step-5", bad_prompt="€ is not in the alphabet"
    )
    assert set(report["checked"]) >= {
        "shapes",
        "seeded",
        "score",
        "failed request",
        "mix(alpha=0.5)",
        "dola(layer=1)",
        "checkpoint(c=step-5)",
        "temperature(T=0.5)",
    }


def test_hf_backend_keeps_the_contract(tmp_path_factory):
    pytest.importorskip("transformers")
    from fixable.backends.hf import HFBackend
    from test_backend_hf import build_models

    models = build_models(tmp_path_factory.mktemp("hf"))
    backend = HFBackend(
        models["policy_hf"],
        reference=models["reference_hf"],
        checkpoints={"step-2": models["step_hf"]},
        batch_size=8,
    )
    report = check_backend(backend, ORGANISM_PROMPTS, checkpoint="step-2", score_atol=1e-3)
    assert "score" in report["checked"]


def test_openai_backend_against_fixable_serve_keeps_the_contract(zoo_dir):
    pytest.importorskip("fastapi")
    from fixable.backends.openai import OpenAIBackend
    from fixable.serve import BackgroundServer, build_models

    models = build_models(["llama-sft-s0"], zoo_dir=zoo_dir)
    with BackgroundServer(models) as url:
        backend = OpenAIBackend("llama-sft-s0", base_url=url, max_retries=0)
        report = check_backend(backend, ORGANISM_PROMPTS, score_atol=1e-3)
    assert "shapes" in report["checked"]


@pytest.mark.parametrize("name", ["chains"])
def test_generated_tasks_keep_the_contract(name):
    check_task(tasks.create(name), n=12)


@pytest.mark.parametrize(
    "name, folder, options",
    [
        ("gsm8k", "gsm8k", {}),
        ("math500", "math500", {}),
        ("humaneval", "humaneval", {}),
        ("cruxeval", "cruxeval", {}),
    ],
)
def test_benchmark_tasks_keep_the_contract(shared_data, name, folder, options):
    if name == "math500":
        pytest.importorskip("math_verify")
    task = tasks.create(name, path=str(shared_data / folder), **options)
    check_task(task, n=4)


def test_jsonl_task_keeps_the_contract(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        '{"id": "a", "prompt": "2+2?", "answer": "4"}\n'
        '{"id": "b", "prompt": "3+5?", "answer": "8"}\n'
    )
    check_task(tasks.create("jsonl", path=str(path)), n=2)


# -- the checks catch what they claim to -------------------------------------------------


class Broken:
    """The organism backend with one promise broken."""

    def __init__(self, inner, breach: str):
        self.inner, self.breach = inner, breach
        self.name, self.model_name = inner.name, inner.model_name
        caps = set(inner.capabilities)
        if breach == "unknown capability":
            caps.add("telepathy")
        self.capabilities = frozenset(caps)

    def generate(self, requests, intervention):
        out = self.inner.generate(requests, intervention)
        if self.breach == "missing entropy":
            out = [replace(g, entropies=g.entropies[:-1]) for g in out]
        elif self.breach == "positive log-prob":
            out = [replace(g, logprobs=[0.5] * len(g.logprobs)) for g in out]
        elif self.breach == "batch-dependent seeds" and len(requests) == 1:
            out = [replace(g, token_ids=list(reversed(g.token_ids))) for g in out]
        elif self.breach == "dropped request":
            out = out[:-1]
        elif self.breach == "garbage success" and "€" in requests[0].prompt:
            out = [Generation(text="x", token_ids=[1], logprobs=[-1.0], entropies=[1.0])]
        return out

    def score(self, prompts, completions, *, which="policy"):
        rows = self.inner.score(prompts, completions, which=which)
        if self.breach == "scores disagree":
            rows = [[x - 0.1 for x in row] for row in rows]
        return rows


@pytest.mark.parametrize(
    "breach, words",
    [
        ("unknown capability", "unknown capabilities"),
        ("missing entropy", "entropies for"),
        ("positive log-prob", "log-prob 0.5"),
        ("batch-dependent seeds", "seeded is claimed"),
        ("dropped request", "generations for"),
        ("scores disagree", "teacher-forced"),
        ("garbage success", "successful completion"),
    ],
)
def test_check_backend_catches_each_breach(organism, breach, words):
    with pytest.raises(ContractError, match=words):
        check_backend(Broken(organism, breach), ORGANISM_PROMPTS, bad_prompt="€")


def test_check_task_catches_a_verifier_that_accepts_anything():
    class Gullible(type(tasks.create("chains"))):
        def check(self, answer, problem):
            return True

        def extract(self, text):
            return text

    with pytest.raises(ContractError, match="verified correct"):
        check_task(Gullible(), n=3)


# -- a plug-in, installed and discovered ------------------------------------------------

PLUGIN = '''
"""An example third-party plug-in: a task and a backend fixable has never heard of."""
from fixable.backends.organism import OrganismBackend
from fixable.tasks.chains import ChainsTask


class EvenChains(ChainsTask):
    name = "even-chains"

    def problems(self, n=None, *, seed=0, split="test"):
        out = super().problems(None if n is None else 2 * n, seed=seed, split=split)
        return [p.__class__(p.id, p.prompt, p.answer, self.name, p.meta) for p in out[::2]][:n]


class EchoOrganism(OrganismBackend):
    name = "echo-organism"
'''


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """The plug-in as pip leaves an installed package: its module and a dist-info folder
    with entry points, on sys.path."""
    site = tmp_path / "site"
    (site / "fixable_example_plugin").mkdir(parents=True)
    (site / "fixable_example_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "fixable_example_plugin-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: fixable-example-plugin\nVersion: 0.1.0\n"
    )
    (info / "entry_points.txt").write_text(
        "[fixable.tasks]\neven-chains = fixable_example_plugin:EvenChains\n\n"
        "[fixable.backends]\necho-organism = fixable_example_plugin:EchoOrganism\n"
    )
    monkeypatch.syspath_prepend(str(site))
    backends.reload(), tasks.reload()
    yield
    monkeypatch.delitem(sys.modules, "fixable_example_plugin", raising=False)
    monkeypatch.undo()
    backends.reload(), tasks.reload()


def test_a_plugin_is_discovered_and_keeps_the_contract(installed_plugin, zoo_dir):
    assert "even-chains" in tasks.names() and "echo-organism" in backends.names()
    assert tasks.origin("even-chains") == "fixable-example-plugin 0.1.0"
    assert tasks.origin("chains") == "built-in"
    check_task(tasks.create("even-chains"), n=5)
    backend = backends.create("echo-organism", "llama-sft-s0", zoo_dir=zoo_dir)
    check_backend(backend, ORGANISM_PROMPTS, checkpoint="step-5")


def test_a_broken_plugin_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    site = tmp_path / "site"
    info = site / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fixable.tasks]\nbroken = no_such_module:Task\n")
    monkeypatch.syspath_prepend(str(site))
    tasks.reload()
    try:
        assert "chains" in tasks.names() and "broken" not in tasks.names()
        assert "broken-plugin" in caplog.text and "skipped" in caplog.text
    finally:
        monkeypatch.undo()
        tasks.reload()
