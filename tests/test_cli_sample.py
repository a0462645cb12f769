"""The sample/runs/query/export commands, and run files, through the real command line."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from fakes import FakeBackend
from fixable import schema
from fixable.cli.main import main
from fixable.config import RunConfig, resolve_config
from fixable.errors import ConfigError
from fixable.registry import backends
from fixable.store import Run


@pytest.fixture(autouse=True)
def fake_backend(monkeypatch):
    """The fake backend, registered for these tests only (other suites list the registry)."""
    backends.names()  # load the built-ins first, so the fake is the only addition
    monkeypatch.setitem(backends._factories, "fake", FakeBackend)


@pytest.fixture
def fixable(capsys):
    def invoke(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as e:
            code = e.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return invoke


def content(path):
    return Run(path).rollouts().drop_columns(list(schema.NON_CONTENT)).to_pylist()


def test_sample_then_query_export_and_list(tmp_path, fixable):
    run = tmp_path / "runs" / "one"
    code, out, err = fixable(
        "sample",
        "--model",
        "fake-a",
        "--backend",
        "fake",
        "--task",
        "chains",
        "--problems",
        "6",
        "--k",
        "3",
        "--out",
        run,
        "-T",
        "difficulties=1,2",
    )
    assert code == 0, err
    assert "fake-a probe: 18 sampled, 0 already present" in out

    code, out, err = fixable(
        "query", run, "SELECT phase, count(*) AS n FROM rollouts GROUP BY phase"
    )
    assert code == 0, err
    assert out.splitlines()[0].split() == ["phase", "n"]
    assert out.splitlines()[2].split() == ["probe", "18"]
    assert "(1 row)" in out

    code, _, err = fixable(
        "query",
        run,
        "SELECT * FROM rollouts",
        "--csv",
        tmp_path / "r.csv",
        "--parquet",
        tmp_path / "r.parquet",
    )
    assert code == 0, err
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 18
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 19

    code, out, err = fixable("export", run, "--jsonl")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 18 and set(lines[0]) == set(schema.ROLLOUTS.names)
    code, _, err = fixable("export", run, "--jsonl", tmp_path / "p.jsonl", "--table", "problems")
    assert code == 0 and "wrote 6 problems" in err

    code, out, err = fixable("runs", tmp_path / "runs")
    assert code == 0, err
    row = [line for line in out.splitlines() if "fake-a" in line][0].split()
    assert row[:6] == [str(run), "fake-a", "probe", "6", "1", "18"]


def test_sweep_inferred_from_r_and_resumed(tmp_path, fixable):
    run = tmp_path / "run"
    args = [
        "sample",
        "-m",
        "fake-a",
        "-b",
        "fake",
        "-n",
        "12",
        "--k",
        "4",
        "--r",
        "3",
        "-i",
        "retry;temperature:0.3",
        "-T",
        "difficulties=[1]",
        "--out",
        run,
    ]
    code, out, err = fixable(*args)
    assert code == 0, err
    assert "failed the probe" in out and "temperature(T=0.3):" in out
    phases = {r["phase"] for r in Run(run).rollouts(columns=["phase"]).to_pylist()}
    assert phases == {"probe", "rescue"}
    code, out, err = fixable(*args)
    assert code == 0, err
    assert "probe: 0 sampled, 48 already present" in out


def test_rescue_without_probe_names_the_fix(tmp_path, fixable):
    code, _, err = fixable(
        "sample",
        "-m",
        "fake-a",
        "-b",
        "fake",
        "-n",
        "3",
        "--phase",
        "rescue",
        "--out",
        tmp_path / "run",
    )
    assert code == 2
    assert err.count("\n") == 1 and "--phase probe" in err


def test_unknown_names_give_one_line_with_a_suggestion(tmp_path, fixable):
    code, _, err = fixable("sample", "-m", "x", "-b", "fake", "--task", "chanis", "--out", tmp_path)
    assert code == 2 and "Did you mean: chains" in err and err.count("\n") == 1
    code, _, err = fixable(
        "sample",
        "-m",
        "x",
        "-b",
        "fake",
        "-i",
        "temprature:0.3",
        "--phase",
        "sweep",
        "--out",
        tmp_path,
    )
    assert code == 2 and "Did you mean: temperature?" in err
    code, _, err = fixable("sample", "-m", "x", "-b", "fakke", "--out", tmp_path)
    assert code == 2 and "Did you mean: fake?" in err


RUN_FILE = """\
# a sweep of the fake backend
model = "fake-a"
backend = "fake"
problems = 5
phase = "probe"
k = 2
seed = 4

[task_options]
difficulties = [1]
"""


def test_run_file_and_overrides(tmp_path, fixable):
    path = tmp_path / "run.toml"
    path.write_text(RUN_FILE)
    config = resolve_config(path, k=3, out=str(tmp_path / "r"))
    assert (config.models, config.k, config.seed, config.task_options) == (
        ("fake-a",),
        3,
        4,
        {"difficulties": [1]},
    )
    code, out, err = fixable("sample", "--config", path, "--out", tmp_path / "r", "-q")
    assert code == 0, err
    assert "10 sampled" in out
    assert Run(tmp_path / "r").manifest["invocations"][0]["config"]["seed"] == 4


@pytest.mark.parametrize(
    ("change", "line", "field", "words"),
    [
        (("k = 2", "k = 0"), 6, "k", "k must be in [1, 4096], got 0"),
        (("k = 2", "k = = 2"), 6, "k", "malformed TOML"),
        (("seed = 4", "sede = 4"), None, "sede", "Did you mean: seed?"),
        (
            ('phase = "probe"', 'phase = "sweep"\ninterventions = ["retry", "mixx:0.5"]'),
            6,
            "interventions",
            "Did you mean: mix?",
        ),
        (
            ("difficulties = [1]", "difficulties = [7]"),
            9,
            "task_options",
            "difficulty must be in [1, 5], got 7",
        ),
        (('model = "fake-a"', "model = 3.5\nmodels = []"), 2, "model", "not both"),
    ],
)
def test_malformed_run_file_names_field_and_line(tmp_path, change, line, field, words):
    path = tmp_path / "run.toml"
    path.write_text(RUN_FILE.replace(*change))
    with pytest.raises(ConfigError) as info:
        resolve_config(path, out=str(tmp_path / "r"))
    message = str(info.value)
    assert str(path) in message and words in message
    assert f"'{field}'" in message
    if line is not None:
        assert f"line {line}" in message
    else:  # an unknown field is named with its line too
        assert "line 7" in message


def test_config_validates_on_construction():
    with pytest.raises(ConfigError, match="r must be in"):
        RunConfig(models=("m",), backend="fake", r=0)
    with pytest.raises(ConfigError, match=r"part i/n needs .* got 3/2"):
        RunConfig(models=("m",), backend="fake", part="3/2")
    with pytest.raises(ConfigError, match="model is required"):
        RunConfig(backend="fake")
    config = RunConfig(models=("m",), backend="fake", interventions=("mix:0.5,0.25", "retry"))
    assert config.interventions == ("mix(alpha=0.5)", "mix(alpha=0.25)", "retry")
    assert RunConfig.from_dict(config.to_dict()) == config


def test_a_run_reproduces_from_its_manifest(tmp_path, fixable):
    first = tmp_path / "first"
    code, _, err = fixable(
        "sample",
        "-m",
        "fake-a",
        "-b",
        "fake",
        "-n",
        "5",
        "--k",
        "2",
        "--r",
        "2",
        "--seed",
        "9",
        "-T",
        "difficulties=[1,2]",
        "--out",
        first,
    )
    assert code == 0, err
    again = tmp_path / "again"
    code, _, err = fixable("sample", "--config", first / "manifest.json", "--out", again)
    assert code == 0, err
    assert content(again) == content(first)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Two random-init organism checkpoints: a policy and a reference for it."""
    import torch

    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    root = tmp_path_factory.mktemp("organism")
    out = []
    for name in ("policy", "reference"):
        torch.manual_seed(len(out))
        model = OrganismLM(ModelConfig(family="gpt", n_layer=2, n_head=2, n_embd=32))
        out.append(save_checkpoint(model, root / name))
    return out


def test_organism_model_run_reads_back_through_query(tmp_path, fixable, tiny_models):
    policy, reference = tiny_models
    run = tmp_path / "run"
    code, out, err = fixable(
        "sample", "--model", policy, "--task", "chains", "--problems", "4", "--k", "2",
        "--r", "2", "--interventions", "retry;mix:0.5;dola:1", "--max-tokens", "16",
        "-B", f"reference={reference}", "--out", run, "-q",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = fixable(
        "query", run,
        "SELECT phase, setting, count(*) AS n, count(ref_logprobs) AS scored, "
        "sum(n_tokens) AS tokens, sum(cost_tokens) AS cost FROM rollouts "
        "GROUP BY phase, setting ORDER BY phase, setting",
    )  # fmt: skip
    assert code == 0, err
    lines = [line.split() for line in out.splitlines()[2:-1]]
    by_setting = {(row[0], row[1]): row[2:] for row in lines}
    assert by_setting[("probe", "retry")][:2] == ["8", "8"]  # every probe rollout scored
    failed = int(by_setting[("rescue", "retry")][0]) // 2
    assert failed > 0  # a random model fails
    assert by_setting[("rescue", "mix(alpha=0.5)")][:2] == [str(2 * failed), "0"]
    mix_tokens, mix_cost = by_setting[("rescue", "mix(alpha=0.5)")][2:]
    assert float(mix_cost) == 2 * int(mix_tokens)

    table = Run(run).rollouts(where="phase = 'probe'")
    for row in table.to_pylist():
        assert row["entropy_kind"] == "full"
        assert row["n_tokens"] == len(row["token_ids"]) == len(row["entropies"])
        assert len(row["policy_logprobs"]) == len(row["ref_logprobs"]) == row["n_tokens"]
    identity = Run(run).manifest["models"][str(policy)]["identity"]
    assert identity["backend"] == "organism"
    assert len(identity["weights_sha256"]["model.safetensors"]) == 64


def test_unknown_organism_model_is_one_line(tmp_path, fixable):
    code, _, err = fixable("sample", "--model", "no-such-model", "--out", tmp_path / "r")
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and "no-such-model" in err
