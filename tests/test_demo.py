"""The demo pipeline: probe → rescue sweep → analysis → report in one resumable call.

Most tests drive it with the deterministic fake backend of tests/fakes.py (four fake
"models" of two families and two methods), so they need no zoo; the last one runs a tiny
configuration on real zoo models through the CLI and is skipped while the zoo is unbuilt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fakes import FakeBackend
from fixable.demo import DEMO, QUICK, DemoConfig, load_config, run_demo
from fixable.errors import ConfigError, StoreError
from fixable.report.summary import headline, iter_estimates
from fixable.schema import NON_CONTENT
from fixable.store import Run

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("gpt-sft-s0", "gpt-rl-s0", "llama-sft-s0", "llama-rl-s0")
INFO = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in MODELS}
TINY = DemoConfig(
    models=MODELS,
    problems=12,
    k=4,
    r=4,
    interventions=("retry", "temperature(T=0.3)", "temperature(T=1.3)", "checkpoint(c=first)"),
    analysis={"n_boot": 30, "stability_boot": 3, "n_seeds": 2, "n_splits": 3},
)


def _checkpoints(model: str) -> dict:
    return {"step-10": Path("/nonexistent/step-10"), "step-20": Path("/nonexistent/step-20")}


def _demo(out: Path, config: DemoConfig = TINY, calls: list | None = None, **kwargs):
    def factory(model: str) -> FakeBackend:
        return FakeBackend(model, calls=calls)

    return run_demo(
        config, out, backend_factory=factory, model_info=INFO, checkpoints=_checkpoints, **kwargs
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    calls: list = []
    out = tmp_path_factory.mktemp("demo") / "run"
    return _demo(out, calls=calls), calls


def test_demo_writes_run_analysis_report_and_summary(finished):
    result, calls = finished
    run = Run(result.run)
    counts = {(r["model"], r["phase"]): r for r in run.counts().to_pylist()}
    for model in MODELS:
        assert counts[(model, "probe")]["rollouts"] == TINY.problems * TINY.k
        assert result.failures[model] > 0
        assert counts[(model, "rescue")]["rollouts"] == result.failures[model] * TINY.r * 4
    for name in (
        "analysis.json",
        "failures.parquet",
        "report.html",
        "summary.json",
        "figures/regime_map.pdf",
    ):
        assert (result.run / name).is_file(), name
    manifest = run.reload()
    assert manifest["demo"]["config"] == TINY.to_dict()
    # the symbolic checkpoint is stored as such and sampled as the model's first checkpoint
    settings = {
        r["setting"] for r in run.query("SELECT DISTINCT setting FROM rollouts").to_pylist()
    }
    assert "checkpoint(c=first)" in settings
    assert any(label == "checkpoint(c=step-10)" for label, _ in calls)
    assert not any(label == "checkpoint(c=first)" for label, _ in calls)
    identity = manifest["models"]["gpt-sft-s0"]["identity"]
    assert identity["checkpoint_aliases"] == {"first": "step-10", "last": "step-20"}


def test_summary_holds_every_figure_of_the_analysis_with_its_interval(finished):
    result, _ = finished
    analysis = json.loads((result.run / "analysis.json").read_text())
    summary = json.loads((result.run / "summary.json").read_text())
    assert result.summary["headline"] == headline(analysis)  # the demo's summary is this analysis'
    for path, node in iter_estimates(analysis):
        assert summary["estimates"][path].get("value") == node.get("value"), path
        if "low" in node:
            assert summary["estimates"][path]["low"] == node["low"], path
    ids = {row["id"] for row in summary["headline"]}
    assert {"topography_accuracy", "routing_lift_steerable_hard_vs_best_fixed"} <= ids
    assert analysis["transfer"] is not None  # two families: transfer runs


class _Interrupted(Exception):
    pass


def test_interrupted_demo_resumes_to_the_uninterrupted_result(finished, tmp_path):
    result, _ = finished
    seen = {"batches": 0}

    class Flaky(FakeBackend):
        def generate(self, requests, intervention):
            seen["batches"] += 1
            if seen["batches"] == 7:  # mid-run: after some models' probes and rescues
                raise _Interrupted
            return super().generate(requests, intervention)

    config = TINY.replace(batch_size=16)  # many small batches, so there is a middle to stop in
    with pytest.raises(_Interrupted):
        run_demo(
            config,
            tmp_path / "run",
            backend_factory=Flaky,
            model_info=INFO,
            checkpoints=_checkpoints,
        )
    partial = (
        Run(tmp_path / "run").query("SELECT count(*) AS n FROM rollouts").column("n")[0].as_py()
    )
    resumed = _demo(tmp_path / "run", config)
    assert 0 < partial < sum(r["rollouts"] for r in Run(resumed.run).counts().to_pylist())

    def content(run_dir):
        table = Run(run_dir).rollouts()
        keep = [c for c in table.column_names if c not in NON_CONTENT]
        return table.select(keep).to_pylist()

    assert content(resumed.run) == content(result.run)
    assert Run(resumed.run).duplicates().num_rows == 0
    assert len(Run(resumed.run).reload()["demo_history"]) == 2
    assert len(Run(resumed.run).keys()) == len(content(result.run))  # every key once


def test_resuming_with_another_configuration_is_refused(finished):
    result, _ = finished
    with pytest.raises(StoreError, match=r"k=4.*fixable demo --config"):
        _demo(result.run, TINY.replace(k=5))


def test_min_failures_probes_more_problems_until_enough(tmp_path):
    config = TINY.replace(models=MODELS[:2], problems=8, min_failures=10, max_problems=60, r=2)
    result = _demo(tmp_path / "run", config, report=False)
    for model in config.models:
        assert result.failures[model] >= 10 or result.problems[model] == 60
        assert result.problems[model] > 8
    probed = (
        Run(result.run)
        .query(
            "SELECT model, count(DISTINCT problem_id) AS n FROM rollouts WHERE phase = 'probe' GROUP BY model"
        )
        .to_pylist()
    )
    assert {r["model"]: r["n"] for r in probed} == result.problems


def test_configuration_errors_name_the_field():
    with pytest.raises(ConfigError, match="Did you mean: problems"):
        DemoConfig.from_dict({"problem": 10})
    with pytest.raises(ConfigError, match="k must be at least 2, got 1"):
        DemoConfig(k=1)
    with pytest.raises(ConfigError, match="must include retry"):
        DemoConfig(interventions=("temperature(T=0.3)",))
    with pytest.raises(ConfigError, match="unknown analysis field 'n_bot'"):
        DemoConfig(analysis={"n_bot": 10})
    with pytest.raises(ConfigError, match="temperature T must be in"):
        DemoConfig(interventions=("retry", "temperature(T=9)"))


def test_a_study_is_a_run_config_plus_an_analysis_config_with_defaults_stated_once():
    from click.testing import CliRunner

    from fixable.analysis.pipeline import AnalysisConfig
    from fixable.cli.main import cli
    from fixable.config import RunConfig

    run = QUICK.run_config(["gpt-sft-s0"])
    assert isinstance(run, RunConfig) and run.phase == "sweep"
    assert (run.k, run.r, run.problems, run.interventions) == (
        QUICK.k,
        QUICK.r,
        QUICK.problems,
        QUICK.interventions,
    )
    assert QUICK.analysis_config() == AnalysisConfig(n_boot=200, n_seeds=3, stability_boot=10)
    # the sampling fields a study does not choose for itself take RunConfig's defaults
    for name in ("task", "problem_seed", "split", "k", "r", "seed", "max_tokens", "backend"):
        assert getattr(DemoConfig(), name) == getattr(RunConfig, name), name
    # ... and its checks
    with pytest.raises(ConfigError, match="unknown option 'dtyp'.*Did you mean: dtype"):
        DemoConfig(backend_options={"dtyp": "float32"})
    with pytest.raises(ConfigError, match="Unknown task 'chain'"):
        DemoConfig(task="chain")
    help_text = CliRunner().invoke(cli, ["demo", "--help"]).output
    assert "Study file fields" in help_text
    for line in ("problems", "240", "analysis.n_boot", "1000", "analysis.stability_boot"):
        assert line in help_text


def test_shipped_run_files_match_the_presets_and_the_full_study_is_paper_scale():
    assert load_config(ROOT / "studies" / "demo.toml") == DEMO
    assert load_config(ROOT / "studies" / "quick.toml") == QUICK
    full = load_config(ROOT / "studies" / "full.toml")
    assert full.min_failures >= 300 and full.max_problems >= full.problems
    assert set(full.seeds) >= {0, 1} and not full.models  # every post-trained zoo model
    assert full.k >= DEMO.k and full.r >= DEMO.r


def test_shipped_seed_studies_select_only_their_training_seeds():
    # the zoo's third seed (s2, the fair topography zoo) must not change what the demo,
    # quick and full studies sample: they choose models by training seed
    from fixable.demo import demo_models
    from fixable.organism import zoo

    for name, seeds in (("demo", {0}), ("quick", {0}), ("full", {0, 1})):
        config = load_config(ROOT / "studies" / f"{name}.toml")
        assert set(config.seeds) == seeds
        present = [
            n
            for n in zoo.list_models()
            if zoo.card(n).get("method") in ("sft", "rl", "distill", "rft")
            and zoo.card(n).get("seed") in seeds
        ]
        if not present:
            continue  # the zoo is not built
        chosen = demo_models(config)
        assert all(n.rsplit("-s", 1)[1] in {str(s) for s in seeds} for n in chosen), chosen
        assert not any(n.endswith("-s2") for n in chosen)
        assert sorted(chosen) == sorted(present)


def test_a_run_reproduces_from_its_manifest(finished):
    result, _ = finished
    assert load_config(result.run) == TINY


def _zoo_has(names) -> bool:
    from fixable.organism import zoo

    present = set(zoo.list_models())
    return all(n in present for n in names) and all(zoo.reference_of(n) in present for n in names)


ZOO_MODELS = ("gpt-sft-s0", "gpt-rl-s0", "llama-sft-s0", "llama-rl-s0")


@pytest.mark.skipif(not _zoo_has(ZOO_MODELS), reason="zoo not built yet (fixable zoo build)")
def test_cli_demo_runs_a_tiny_study_on_zoo_models_and_resumes(tmp_path, capsys):
    from fixable.cli.main import main

    run_file = tmp_path / "tiny.toml"
    run_file.write_text(
        f"models = {list(ZOO_MODELS)}\nproblems = 10\nk = 4\nr = 3\n"
        'interventions = ["retry", "temperature(T=0.3)", "mix(alpha=0.5)", "checkpoint(c=first)"]\n'
        "[task_options]\ndifficulties = [3, 4, 5]\n"
        "[analysis]\nn_boot = 30\nn_seeds = 2\nn_splits = 3\nstability_boot = 3\n"
    )
    out = tmp_path / "run"
    main(["demo", "--config", str(run_file), "--out", str(out), "-q"])
    printed = capsys.readouterr().out
    assert "topography, held-out models" in printed and "84.3 ± 4.3 %" in printed
    assert "permuted-methods null" in printed or "not computed" in printed
    assert "routing lift vs best fixed, steerable-hard" in printed and "+12.2 points" in printed
    assert f"report:   {out / 'report.html'}" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["data"]["models"]) == set(ZOO_MODELS)
    run = Run(out)
    manifest = run.manifest
    assert manifest["demo"]["command"].startswith("fixable demo --config")
    for model in ZOO_MODELS:  # teacher-forced under the family's base: drift is measurable
        assert manifest["models"][model]["identity"]["reference"] == f"{model.split('-')[0]}-base"
    before = run.query("SELECT count(*) AS n FROM rollouts").column("n")[0].as_py()
    main(
        ["demo", "--config", str(run_file), "--out", str(out), "-q"]
    )  # finished: resumes to a no-op
    assert Run(out).query("SELECT count(*) AS n FROM rollouts").column("n")[0].as_py() == before


def test_the_planted_presets_are_smaller_versions_of_the_planted_study():
    from fixable.demo import PLANTED, PLANTED_QUICK

    study = load_config(ROOT / "studies" / "planted.toml")
    for preset in (PLANTED, PLANTED_QUICK):
        assert preset.task == study.task == "chains-planted"
        assert preset.interventions == study.interventions
        assert set(preset.models) <= set(study.models)
        assert preset.problems < study.problems and preset.r <= study.r
        # routed by the natural zoo's frozen thresholds, scored against the planted truth
        assert preset.analysis_config().frozen_router == study.analysis_config().frozen_router
        assert preset.analysis_config().truth == study.analysis_config().truth == "key"
    assert PLANTED_QUICK.problems * len(PLANTED_QUICK.models) < PLANTED.problems * len(
        PLANTED.models
    )


def test_the_demo_runs_its_positive_control_first_and_the_report_shows_it(tmp_path):
    from fixable.demo import control_dir, control_lines
    from fixable.report.control import SECTION_ID

    control = TINY.replace(
        models=MODELS[:2],
        task="chains-planted",
        interventions=("retry", "temperature(T=0.3)", "mix(alpha=0.5)"),
        analysis={**TINY.analysis, "truth": "key"},
    )
    out = tmp_path / "run"
    result = _demo(out, control=control)
    control_run = control_dir(out)
    assert control_run == tmp_path / "run-planted"
    analysis = json.loads((control_run / "analysis.json").read_text())
    assert set(analysis["data"]["models"]) == set(MODELS[:2])
    assert analysis["recovery"]["field"] == "key"  # no truth map for fakes: the key itself
    assert set(analysis["routing"]["per_model"]) == set(MODELS[:2])
    assert Run(out).manifest["demo"]["positive_control"] == str(control_run.resolve())
    page = result.report.read_text()
    assert f'id="{SECTION_ID}"' in page and "A positive control" in page
    summary = json.loads((out / "summary.json").read_text())
    lifts = summary["positive_control"]["lift_over_best_fixed"]
    assert set(lifts) == set(MODELS[:2]) and "shuffled_within_model" in lifts[MODELS[0]]["all"]
    lines = control_lines(control_run)
    assert lines[0].startswith("positive control") and any(MODELS[0] in x for x in lines)
    # the natural run's own analysis has no truth and is unchanged by the control
    assert "recovery" not in json.loads((out / "analysis.json").read_text())
