"""The whole analysis over a run in the store: ``fixable analyze`` writes a stable
analysis.json (every figure with an interval and its n, the paper's figures beside ours),
the per-failure table and the tables; stages that lack inputs say why; same seed, same
figures. Also ``fixable rescue`` end to end on a registered fake backend."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from analysis_fakes import SignatureBackend
from fixable.analysis.pipeline import AnalysisConfig, analyze, load_runs
from fixable.analysis.synthetic import planted_rollouts
from fixable.cli.main import cli
from fixable.errors import ConfigError
from fixable.registry import backends
from fixable.store import Run

MODELS = [f"{f}-{m}-s0" for f in ("gpt", "llama") for m in ("sft", "rl")]
INFO = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in MODELS}
FAST = ["--n-boot", "100", "--n-seeds", "2", "--seed", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("analysis") / "run"
    table, _ = planted_rollouts(MODELS, n_failures=12, r=16, seed=11)
    run = Run.create(path, run_seed=11)
    with run.writer() as writer:
        writer.extend(table.to_pylist())
    (path.parent / "info.json").write_text(json.dumps(INFO))
    return path


def _figures(node, path="$"):
    """Every dict that holds a figure with an interval ("value" with "low"/"high")."""
    if isinstance(node, dict):
        if "value" in node and "low" in node:
            yield path, node
        for k, v in node.items():
            yield from _figures(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _figures(v, f"{path}[{i}]")


def test_fixable_analyze_writes_every_output(run_dir, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        cli,
        [
            "analyze",
            str(run_dir),
            "--out",
            str(out),
            "--model-info",
            str(run_dir.parent / "info.json"),
            "--quiet",
            *FAST,
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["format"] == "fixable-analysis" and doc["format_version"] == 2
    for key in (
        "sources",
        "config",
        "paper",
        "data",
        "features",
        "labels",
        "regimes",
        "routing",
        "topography",
        "transfer",
        "skipped",
        "notes",
    ):
        assert key in doc
    assert doc["paper"]["topography_accuracy"]["mean"] == 0.843
    assert doc["topography"]["paper"]["mean"] == 0.843
    assert doc["routing"]["paper"]["routing_lift_steerable_hard"] == 0.122
    figures = list(_figures(doc))
    assert len(figures) > 50
    for where, fig in figures:
        assert "n" in fig and "high" in fig, where
    assert doc["sources"][0]["run_seed"] == 11
    assert "halves" in doc["regimes"]["gmm"]["probe_split_stability"]["how"]
    failures = pd.read_parquet(out / "failures.parquet")
    for col in (
        "model",
        "family",
        "method",
        "problem_id",
        "answer_dispersion",
        "trajectory_uncertainty",
        "reference_drift",
        "label",
        "uncertain",
        "routed_setting",
        "rescue[retry]",
        "within_budget[routed]",
        "regime_gmm",
    ):
        assert col in failures.columns, col
    assert len(failures) == doc["data"]["n_failures"] == 4 * 12
    for name in (
        "failures.csv",
        "labels.csv",
        "routing.csv",
        "curves.csv",
        "topography.csv",
        "confusion.csv",
        "transfer.csv",
        "tables.md",
    ):
        assert (out / name).exists(), name
    assert "84.3" in (out / "tables.md").read_text()


def test_same_seed_same_figures(run_dir):
    table = Run(run_dir).rollouts()
    config = AnalysisConfig(n_boot=100, n_seeds=2, stability_boot=5, random_state=3)
    a = analyze(table, model_info=INFO, config=config).result
    b = analyze(table, model_info=INFO, config=config).result
    a.pop("created"), b.pop("created")
    assert a == b


def test_missing_stages_say_why():
    # models of one's own (no zoo card, no --model-info), probes only
    table, _ = planted_rollouts(["acme-a", "acme-b"], n_failures=10, r=4, seed=13)
    probes = table.filter(pc.equal(table["phase"], "probe"))
    res = analyze(probes, config=AnalysisConfig(n_boot=50, n_seeds=1, stability_boot=3)).result
    assert "rescue" in res["skipped"]["routing"]
    assert "method" in res["skipped"]["topography"]
    assert "two model families" in res["skipped"]["transfer"]
    assert res["labels"] is None and res["routing"] is None
    assert res["regimes"]["gmm"]["n_regimes"] >= 1


def test_analyze_selects_models_by_pattern(run_dir):
    table, _ = load_runs([run_dir], models=["gpt-*", "llama-rl-s0"])
    assert set(table.column("model").to_pylist()) == {"gpt-sft-s0", "gpt-rl-s0", "llama-rl-s0"}
    with pytest.raises(ConfigError, match="no model of the runs matches"):
        load_runs([run_dir], models=["*-s9"])


def test_analyze_without_failures_names_the_fix(tmp_path):
    table, _ = planted_rollouts(["gpt-rl-s0"], n_failures=0, n_solved=3)
    from fixable.errors import DataError

    with pytest.raises(DataError, match="fixable sample"):
        analyze(table)


@pytest.fixture
def fake_backend():
    name = "signature-fake"
    if name not in backends:
        backends.register(name)(SignatureBackend)
    return name


def test_fixable_rescue_end_to_end(fake_backend):
    args = [
        "rescue",
        "--backend",
        fake_backend,
        "--model",
        "fake-policy",
        "--task",
        "chains",
        "--prompt",
        "cold: 4821|a27|",
        "--answer",
        "0042",
        "--budget",
        "2000",
        "--thresholds",
        "answer_dispersion=0.5,trajectory_uncertainty=0.5,reference_drift=1.0",
    ]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["solved"] and doc["setting"] == "temperature(T=0.3)"
    assert doc["tokens_spent"] <= 2000
    text = CliRunner().invoke(cli, args)
    assert "solved (rescued)" in text.output and "routed to temperature(T=0.3)" in text.output


def test_fixable_rescue_needs_thresholds(fake_backend, capsys):
    from fixable.cli.main import main

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "rescue",
                "--backend",
                fake_backend,
                "--model",
                "x",
                "--prompt",
                "hot: 1|a11|",
                "--answer",
                "0042",
            ]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "the routing rule needs thresholds: --calibration RUN" in err and "--thresholds" in err


def test_shipped_router_thresholds_are_frozen_on_other_models_with_provenance():
    from fixable.analysis.thresholds import default_router, load_defaults

    doc = load_defaults()
    assert set(doc["families"]) == {"gpt", "llama"}
    assert "scripts/freeze_router_thresholds.py" in doc["provenance"]["command"]
    for family, entry in doc["families"].items():
        assert entry["n_failures"] > 20
        assert all(
            m.startswith(f"{family}-") and m.endswith("-s1") for m in entry["calibration_models"]
        )
    router = default_router("llama-sft-s0", "llama")
    assert router.thresholds == doc["families"]["llama"]["thresholds"]
    assert "llama-sft-s0" not in router.calibration_models
    assert default_router("x", "unknown-family") is None


def test_fixable_rescue_calibrates_on_an_earlier_run(fake_backend, tmp_path):
    table, _ = planted_rollouts(["fake-policy"], n_failures=20, seed=12)
    run = Run.create(tmp_path / "calibration", run_seed=12)
    with run.writer() as writer:
        writer.extend(table.to_pylist())
    args = [
        "rescue",
        "--backend",
        fake_backend,
        "--model",
        "fake-policy",
        "--prompt",
        "hot: 4821|a27|",
        "--answer",
        "0042",
        "--budget",
        "2000",
        "--calibration",
        str(tmp_path / "calibration"),
        "--json",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    medians = doc["route"]["thresholds"]
    assert medians["trajectory_uncertainty"] > 0.5  # the planted run's scale, not the failure's
    assert doc["route"]["setting"] == "temperature(T=1.3)" and doc["solved"]


def test_organism_sweep_analyze_and_rescue_end_to_end(tmp_path):
    """The real engine on tiny random-init checkpoints: sample → analyze → rescue."""
    torch = pytest.importorskip("torch")
    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    for name, seed in (("policy", 0), ("ref", 1)):
        torch.manual_seed(seed)
        save_checkpoint(OrganismLM(ModelConfig(n_layer=2, n_head=2, n_embd=32)), tmp_path / name)
    run = tmp_path / "run"
    common = ["--model", str(tmp_path / "policy"), "-B", f"reference={tmp_path / 'ref'}"]
    sample = [
        "sample",
        *common,
        "--task",
        "chains",
        "--problems",
        "4",
        "--k",
        "4",
        "--r",
        "4",
        "--interventions",
        "retry;temperature:0.3,1.3;mix:0.5",
        "--phase",
        "sweep",
        "--max-tokens",
        "16",
        "--out",
        str(run),
        "-q",
    ]
    result = CliRunner().invoke(cli, sample)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(cli, ["analyze", str(run), "-q", *FAST])
    assert result.exit_code == 0, result.output
    doc = json.loads((run / "analysis.json").read_text())
    assert doc["data"]["n_failures"] == 4  # a random-init model solves nothing
    assert doc["features"]["unavailable"] == {}  # the reference was scored: drift available
    assert doc["labels"]["regimes"]["structural"]["all"]["count"] == 4
    rescue = [
        "rescue",
        *common,
        "--calibration",
        str(run),
        "--budget",
        "400",
        "--max-tokens",
        "16",
        "--index",
        "1",
        "--json",
    ]
    result = CliRunner().invoke(cli, rescue)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["tokens_spent"] <= 400 and [c["phase"] for c in out["trace"]][:2] == [
        "probe",
        "score",
    ]
    assert out["features"]["reference_drift_available"]


def test_a_run_passed_twice_is_refused_and_two_seeds_are_pooled(run_dir, tmp_path):
    from fixable.analysis.pipeline import load_runs
    from fixable.errors import DataError

    with pytest.raises(DataError, match="pass each run once"):
        load_runs([run_dir, run_dir])
    table, _ = planted_rollouts(MODELS[:1], n_failures=3, r=4, seed=99)  # other seeds
    other = Run.create(tmp_path / "other", run_seed=99)
    with other.writer() as writer:
        writer.extend(table.to_pylist())
    pooled, sources = load_runs([run_dir, tmp_path / "other"])
    assert [s["run_seed"] for s in sources] == [11, 99]
    assert sorted(set(pooled["run"].to_pylist())) == ["0:run", "1:other"]
