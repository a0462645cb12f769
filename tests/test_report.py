"""The run report: self-contained HTML, figures as PNG and PDF, summary.json holding every
estimate of the analysis, figures that say why they are missing, and the CLI.

Built on the analysis engineer's planted-truth rollouts (fixable.analysis.synthetic), so
these tests need neither the zoo nor a model.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from fixable.analysis.pipeline import AnalysisConfig, analyze, write_analysis
from fixable.analysis.synthetic import planted_rollouts
from fixable.report import build_report
from fixable.report.figures import FIGURES
from fixable.report.summary import iter_estimates

MODELS = ("gpt-sft-s0", "gpt-rl-s0", "llama-sft-s0", "llama-rl-s0")
INFO = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in MODELS}
FAST = AnalysisConfig(n_boot=40, stability_boot=4, n_seeds=2, n_splits=3)
PNG_MAGIC, PDF_MAGIC = b"\x89PNG\r\n\x1a\n", b"%PDF"


def _analysis_dir(tmp_path: Path, table, name: str = "analysis") -> Path:
    out = tmp_path / name
    write_analysis(analyze(table, model_info=INFO, config=FAST), out)
    return out


@pytest.fixture(scope="module")
def planted():
    table, _ = planted_rollouts(MODELS, n_failures=15, n_solved=2, r=16, seed=3)
    return table


@pytest.fixture(scope="module")
def report(planted, tmp_path_factory):
    directory = _analysis_dir(tmp_path_factory.mktemp("report"), planted)
    files = build_report(directory)
    return directory, files


def test_report_is_self_contained_and_shows_every_figure(report):
    directory, files = report
    page = files.html.read_text()
    assert files.unavailable == {}, files.unavailable
    # nothing is fetched: no external URL in any src/href, no external script or stylesheet
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<script" not in page and '<link rel="stylesheet"' not in page
    images = re.findall(
        r'<img class="figure" id="img-([a-z_]+)"[^>]*src="data:image/png;base64,([^"]+)"', page
    )
    assert [name for name, _ in images] == [spec.name for spec in FIGURES]
    for _, data in images:
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    captions = re.findall(r"<figcaption>(.*?)<span", page, re.S)
    assert len(captions) == len(FIGURES)
    assert all("look for" in c for c in captions), captions
    for name, (png, pdf) in files.figures.items():
        assert png.read_bytes().startswith(PNG_MAGIC), name
        assert pdf.read_bytes().startswith(PDF_MAGIC), name
        assert f'href="figures/{name}.pdf"' in page  # relative: the folder moves as one


def test_headline_box_sets_our_numbers_beside_the_papers(report):
    directory, files = report
    page = files.html.read_text()
    result = json.loads((directory / "analysis.json").read_text())
    headline = page[page.index('id="headline"') : page.index('id="figures"')]
    acc = result["topography"]["classifier"]["accuracy"]
    assert f"{acc['mean'] * 100:.1f} %" in headline
    assert "84.3 % ± 4.3 %" in headline  # the paper's topography: mean and std together
    lift = result["routing"]["subsets"]["steerable-hard"]["lift"]["best_fixed"]
    assert f"{lift['value'] * 100:+.1f}" in headline
    assert "+12.2 points" in headline  # the paper's routing lift


def test_summary_holds_every_estimate_of_the_analysis_with_its_interval(report):
    directory, files = report
    result = json.loads((directory / "analysis.json").read_text())
    summary = json.loads(files.summary.read_text())
    expected = dict(iter_estimates(result))
    assert len(expected) > 50  # the analysis is rich; a broken walk would find few
    # estimates inside lists count too (checked against the analysis, not the walk)
    # (pair 0 is in family: one model per method there, so held-out models cannot score it)
    pair = result["transfer"]["pairs"][1]["classifier"]["accuracy"]
    assert summary["estimates"]["transfer.pairs.1.classifier.accuracy"]["value"] == pair["value"]
    for path, node in expected.items():
        got = summary["estimates"][path]
        for key in ("value", "low", "high", "mean", "std"):
            if key in node:
                assert got[key] == node[key], (path, key)
    assert summary["curves"]["budgets"] == result["routing"]["curves"]["budgets"]
    ids = {row["id"]: row for row in summary["headline"]}
    topo = ids["topography_accuracy"]
    assert topo["paper"]["mean"] == pytest.approx(0.843)
    assert topo["low"] <= topo["value"] <= topo["high"]
    assert topo["controls"]["null_methods_permuted_mean"] is not None  # beside its null
    lift = ids["routing_lift_steerable_hard_vs_best_fixed"]
    assert lift["paper"] == pytest.approx(0.122)
    assert lift["low"] <= lift["value"] <= lift["high"]
    assert lift["controls"]["shuffled_within_model"] is not None
    assert "routing_lift_steerable_hard_vs_retry" not in ids  # retry ~ 0 there by definition
    assert set(summary["figures"]) == {spec.name for spec in FIGURES}


def test_figures_without_data_say_why(planted, tmp_path):
    probe_only = planted.filter(pc.equal(planted["phase"], "probe"))
    directory = _analysis_dir(tmp_path, probe_only)
    files = build_report(directory, formats=("png",))
    for name in ("rescue_matrix", "rescue_curves", "label_shares"):
        assert name in files.unavailable
    assert "regime_map" in files.figures  # features need no rescue phase
    page = files.html.read_text()
    assert page.count('class="unavailable"') == len(files.unavailable)
    assert "rescue" in files.unavailable["rescue_curves"]
    summary = json.loads(files.summary.read_text())
    lift = next(r for r in summary["headline"] if r["id"].startswith("routing_lift"))
    assert lift["value"] is None and lift["skipped"]


def _write_run(directory: Path, table, shard: str) -> None:
    from fixable.store import Run, write_shard

    run = Run.create(directory)
    write_shard(table, run.path / "rollouts" / f"synthetic-{shard}.parquet")


def test_a_run_is_analysed_once_and_again_when_it_grows(planted, tmp_path):
    first = planted.filter(pc.is_in(planted["model"], value_set=pa.array(MODELS[:2])))
    _write_run(tmp_path / "run", first, "first")
    kwargs = dict(analysis_config=FAST, model_info=INFO, formats=("png",))
    built = build_report(tmp_path / "run", **kwargs)
    assert built.analysed and (tmp_path / "run" / "analysis.json").is_file()
    assert not build_report(tmp_path / "run", **kwargs).analysed  # current: reused
    rest = planted.filter(pc.is_in(planted["model"], value_set=pa.array(MODELS[2:])))
    _write_run(tmp_path / "run", rest, "rest")
    again = build_report(tmp_path / "run", **kwargs)
    assert again.analysed  # the run grew: the old analysis is stale
    summary = json.loads(again.summary.read_text())
    assert summary["data"]["n_rollouts"] == planted.num_rows


def test_cli_writes_the_report_elsewhere_and_refuses_a_non_run(report, tmp_path, capsys):
    from fixable.cli.main import main

    directory, _ = report
    main(["report", str(directory), "--out", str(tmp_path / "elsewhere"), "-q", "--no-pdf"])
    out = capsys.readouterr().out
    assert f"report: {tmp_path / 'elsewhere' / 'report.html'}" in out
    assert (tmp_path / "elsewhere" / "figures" / "regime_map.png").is_file()
    assert not list((tmp_path / "elsewhere" / "figures").glob("*.pdf"))

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path / "empty"), "-q"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "fixable analyze" in err and err.count("\n") == 1
