"""The real-model study on tiny GGUF Llamas: the selection rule, the study's refusal to run
without a chosen slice or with a task of its own, and (``slow``) the whole GPU script,
``benchmarks/gpu/real_study.sh``, dry-run on the CPU at toy sizes: build the variants,
select the slice, study them, report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gguf")
pytest.importorskip("accelerate")

from fixable.errors import ConfigError  # noqa: E402
from fixable.realstudy import (  # noqa: E402
    Candidate,
    SelectConfig,
    choose,
    load_select_config,
    load_selection,
    pass_at_1,
    study_config,
)
from gguf_fixtures import tiny_llama, write_gguf, write_gsm8k  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# 2- and 3-step solutions (the steps= option slices on them)
QUESTIONS = [
    ("Tom has 3 apples and gets 2 more. How many?", "3+2=<<3+2=5>>5\nSo 5.\n#### 5"),
    ("A box holds 4 pens. How many in 2 boxes?", "4*2=<<4*2=8>>8\nSo 8.\n#### 8"),
    ("Sam had 9 and gave 4 away. How many left?", "9-4=<<9-4=5>>5\nSo 5.\n#### 5"),
    ("Ann reads 6 pages a day for 2 days. Pages?", "6*2=<<6*2=12>>12\nSo 12.\n#### 12"),
    ("There are 10 birds and 3 fly off. How many?", "10-3=7\nThen 7.\nSo 7.\n#### 7"),
    ("Bo buys 2 packs of 5 cards. How many cards?", "2*5=10\nThen 10.\nSo 10.\n#### 10"),
    ("Al has 8 and eats 2. How many?", "8-2=6\nThen 6.\nSo 6.\n#### 6"),
    ("Jo has 1 and finds 1. How many?", "1+1=2\nThen 2.\nSo 2.\n#### 2"),
]


def config(**changes) -> SelectConfig:
    fields = dict(
        bases=("a", "b"),
        candidates=(Candidate("easy", "gsm8k"), Candidate("hard", "gsm8k"), Candidate("mid", "x")),
    )
    fields.update(changes)
    return SelectConfig(**fields)


def m(*values):
    return {base: {"value": v} for base, v in zip(("a", "b"), values, strict=True)}


def test_the_rule_takes_the_slice_nearest_the_target_inside_the_band():
    measured = {"easy": m(0.8, 0.5), "hard": m(0.15, 0.3), "mid": m(0.35, 0.55)}
    decision = choose(config(), measured)
    assert decision["chosen"] == "mid" and "beating 1 other" in decision["reason"]
    measured["mid"] = m(0.05, 0.4)  # one base below the band: out
    assert choose(config(), measured)["chosen"] == "hard"
    measured["hard"] = m(None, 0.4)  # not measured: out
    decision = choose(config(), measured)
    assert decision["chosen"] is None and "no candidate slice" in decision["reason"]
    # a band of [0, 1] takes anything; ties go to the earlier candidate
    assert (
        choose(config(band=(0.0, 1.0), target=0.5), {k: m(0.0, 0.0) for k in measured})["chosen"]
        == "easy"
    )


def test_pass_at_1_is_the_mean_share_over_problems():
    got = pass_at_1({"p1": {"n": 4, "correct": 1}, "p2": {"n": 4, "correct": 3}})
    assert got["value"] == 0.5 and got["problems"] == 2 and got["rollouts"] == 8
    assert got["se"] == pytest.approx(((0.25**2 + 0.25**2) / 1) ** 0.5 / 2**0.5)
    assert pass_at_1({})["value"] is None


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="band"):
        config(band=(0.5, 0.4))
    with pytest.raises(ConfigError, match="sets half"):
        config(candidates=(Candidate("c", "gsm8k", {"half": 0}),))
    file = tmp_path / "s.toml"
    file.write_text('bases = ["a"]\nproblem = 3\n[[candidates]]\nname = "c"\ntask = "gsm8k"\n')
    with pytest.raises(ConfigError, match="unknown field 'problem'. Did you mean: problems"):
        load_select_config(file)
    shipped = load_select_config(ROOT / "studies" / "real-select.toml")
    assert shipped.bases == ("smollm2-135m-instruct", "gemma-3-270m")
    assert shipped.band == (0.10, 0.70)


def test_the_study_takes_its_slice_from_the_selection_only(tmp_path):
    with pytest.raises(ConfigError, match="run `fixable real select` first"):
        load_selection(tmp_path)
    (tmp_path / "selection.json").write_text(json.dumps({"chosen": None, "reason": "none fit"}))
    with pytest.raises(ConfigError, match="chose no slice: none fit"):
        load_selection(tmp_path)
    chosen = {"name": "c", "task": "gsm8k", "task_options": {"steps": 2, "half": 1}}
    (tmp_path / "selection.json").write_text(json.dumps({"chosen": chosen, "reason": "r"}))
    selection = load_selection(tmp_path / "selection.json")
    demo = study_config(ROOT / "studies" / "real.toml", selection)
    assert demo.task == "gsm8k" and demo.task_options == {"steps": 2, "half": 1}
    assert demo.backend == "hf" and "dola(layer=8)" in demo.interventions
    bad = tmp_path / "study.toml"
    bad.write_text('models = ["x"]\ntask = "gsm8k"\n')
    with pytest.raises(ConfigError, match="task comes from the slice selection"):
        study_config(bad, selection)


def _toy_files(root: Path) -> dict[str, str]:
    """Two tiny GGUF 'families', GSM8K-shaped data and toy-sized run files."""
    bases = [write_gguf(tiny_llama(seed=s), root / f"tiny{s}.gguf") for s in (3, 4)]
    data = write_gsm8k(root / "data" / "gsm8k", QUESTIONS)
    common = f'data = "{data}"\nsteps = 4\nbatch_size = 2\nlr = 3e-3\nwarmup = 1\n'
    common += "checkpoint_every = 2\ntrain_problems = 8\nmax_length = 400\n"
    recipes = root / "recipes.toml"
    recipes.write_text(
        "".join(
            f'[recipes.{name}]\nbase = "gguf:{base}"\nmethod = "sft"\nseed = {seed}\n{common}\n'
            for name, base, seed in (
                ("tinya-sft-s0", bases[0], 0),
                ("tinya-sft-s1", bases[0], 1),
                ("tinyb-sft-s0", bases[1], 0),
            )
        )
    )
    select = root / "select.toml"
    select.write_text(
        f'bases = ["gguf:{bases[0]}", "gguf:{bases[1]}"]\nproblems = 2\nk = 2\n'
        "max_tokens = 6\nband = [0.0, 1.0]\ntarget = 0.5\nbatch_size = 64\n"
        '[backend_options]\ndevice = "cpu"\nbatch_size = 16\n'
        '[[candidates]]\nname = "two-step"\ntask = "gsm8k"\ntask_options = { steps = 2 }\n'
        '[[candidates]]\nname = "three-step"\ntask = "gsm8k"\ntask_options = { steps = 3, shots = 1 }\n'
    )
    study = root / "study.toml"
    study.write_text(
        'models = ["tinya-sft-s0", "tinya-sft-s1", "tinyb-sft-s0"]\nproblems = 2\nk = 2\nr = 2\n'
        'interventions = ["retry", "temperature(T=0.5)", "mix(alpha=0.5)", '
        '"checkpoint(c=first)", "dola(layer=1)"]\nmax_tokens = 6\nbatch_size = 64\n'
        '[backend_options]\ndevice = "cpu"\nbatch_size = 16\n'
        "[analysis]\nn_boot = 20\nn_seeds = 2\nstability_boot = 2\n"
    )
    return {
        "REAL_RECIPES": str(recipes),
        "REAL_SELECT": str(select),
        "REAL_STUDY": str(study),
        "DATA": str(root / "data"),
    }


def _dry_run(tmp_path: Path, device: str) -> None:
    pytest.importorskip("duckdb")  # the run store (a wheel to carry to a bare GPU machine)
    env = {
        **os.environ,
        **_toy_files(tmp_path),
        "REAL_OUT": str(tmp_path / "out"),
        "REAL_DEVICE": device,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    script = ROOT / "benchmarks" / "gpu" / "real_study.sh"
    done = subprocess.run(
        ["bash", str(script)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-4000:]
    out = tmp_path / "out"
    timings = [line.split("\t") for line in (out / "timings.tsv").read_text().splitlines()]
    assert [(name, rc) for name, _, rc in timings] == [
        ("build", "0"),
        ("select", "0"),
        ("study", "0"),
    ]
    cards = json.loads((out / "zoo-cards.json").read_text())
    assert sorted(cards) == ["tinya-sft-s0", "tinya-sft-s1", "tinyb-sft-s0"]
    assert all(c["device"] == device for c in cards.values())
    selection = json.loads((out / "select" / "selection.json").read_text())
    assert selection["chosen"]["name"] == "two-step"  # a tie at 0 %: the earlier one
    assert selection["chosen"]["task_options"]["half"] == 1
    assert set(selection["measured"]["three-step"]) == set(selection["config"]["bases"])
    study = out / "study"
    assert (study / "report.html").is_file() and (study / "analysis.json").is_file()
    manifest = json.loads((study / "manifest.json").read_text())
    assert manifest["demo"]["config"]["task_options"]["half"] == 1
    assert {m["identity"]["device"] for m in manifest["models"].values()} == {device}
    # the study probed only half 1, the selection only half 0: no problem in both
    import duckdb

    def problem_ids(run: Path) -> set[str]:
        files = str(run / "rollouts" / "*.parquet")
        return {r[0] for r in duckdb.sql(f"SELECT DISTINCT problem_id FROM '{files}'").fetchall()}

    assert problem_ids(study) and not problem_ids(study) & problem_ids(out / "select" / "two-step")
    # run again: every step resumes to nothing new
    again = subprocess.run(
        ["bash", str(script)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert again.returncode == 0, again.stderr[-4000:]


@pytest.mark.slow
def test_the_gpu_script_dry_runs_on_the_cpu(tmp_path):
    _dry_run(tmp_path, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_the_gpu_script_runs_on_a_gpu(tmp_path):
    _dry_run(tmp_path, "cuda")


def test_cli_refuses_a_study_without_a_selection_in_one_line(tmp_path, capsys):
    from fixable.cli.main import main

    study = str(ROOT / "studies" / "real.toml")
    with pytest.raises(SystemExit) as info:
        main(["real", "study", "-c", study, "-s", str(tmp_path), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "run `fixable real select` first" in err and "\n" not in err
    assert not (tmp_path / "o").exists()
    bad = tmp_path / "select.toml"
    bad.write_text('bases = ["a"]\n')
    with pytest.raises(SystemExit) as info:
        main(["real", "select", "-c", str(bad), "-o", str(tmp_path / "s")])
    assert info.value.code == 2 and "at least one [[candidates]]" in capsys.readouterr().err
