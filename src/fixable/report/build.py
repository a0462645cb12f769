"""``build_report``: a run (or a directory holding analysis.json) → report.html, the figures
as PNG and PDF, and summary.json.

A run without an up-to-date analysis is analysed first with the analysis' defaults
(``fixable.analysis.pipeline.analyze``) and analysis.json is written beside it, exactly as
``fixable analyze RUN`` would. "Up to date" means the analysis counted as many rollouts
as the run now holds; ``reanalyze=True`` forces a fresh one.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fixable.errors import DataError, StoreError
from fixable.report.figures import FIGURES, FigureUnavailable
from fixable.report.html import RenderedFigure, render_page
from fixable.report.style import report_style
from fixable.report.summary import build_summary

logger = logging.getLogger(__name__)

ANALYSIS_FILE, FAILURES_FILE = "analysis.json", "failures.parquet"
REPORT_FILE, SUMMARY_FILE, FIGURES_DIR = "report.html", "summary.json", "figures"
PNG_DPI = 144


@dataclass
class ReportFiles:
    """What ``build_report`` wrote."""

    html: Path
    summary: Path
    figures: dict[str, list[Path]] = field(default_factory=dict)  # name → [png, pdf]
    unavailable: dict[str, str] = field(default_factory=dict)  # figure name → why it is not drawn
    analysed: bool = False  # whether the analysis was (re)computed for this report
    seconds: float = 0.0


def _rollout_count(run_dir: Path) -> int | None:
    from fixable.store import Run

    try:
        table = Run(run_dir).query("SELECT count(*) AS n FROM rollouts")
    except (StoreError, Exception) as e:  # an unreadable run is reported by analyze itself
        logger.info("cannot count the rollouts of %s: %s", run_dir, e)
        return None
    return int(table.column("n")[0].as_py())


def _is_run(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def analysis_is_current(directory: Path) -> bool:
    """Whether ``directory/analysis.json`` exists and saw every rollout the run now holds."""
    path = directory / ANALYSIS_FILE
    if not path.is_file() or not (directory / FAILURES_FILE).is_file():
        return False
    if not _is_run(directory):
        return True  # an analysis directory of its own (``fixable analyze ... --out``)
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    from fixable.analysis.result import FORMAT_VERSION

    if result.get("format_version") != FORMAT_VERSION:
        return False  # an analysis of an earlier protocol: recompute it
    sources = result.get("sources") or []
    seen = sum(int(s.get("rollouts") or 0) for s in sources)
    now = _rollout_count(directory)
    return bool(sources) and now is not None and seen == now


def ensure_analysis(
    directory: str | Path,
    *,
    reanalyze: bool = False,
    config=None,
    model_info: Mapping[str, Mapping] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, pd.DataFrame | None, bool]:
    """The analysis of ``directory`` (result dict, per-failure table, whether it was computed now)."""
    directory = Path(directory)
    if not reanalyze and analysis_is_current(directory):
        result = json.loads((directory / ANALYSIS_FILE).read_text())
        return result, pd.read_parquet(directory / FAILURES_FILE), False
    if not _is_run(directory):
        raise StoreError(
            f"{directory} holds neither a run (manifest.json) nor an analysis (analysis.json); "
            "point `fixable report` at a run directory or at the --out of `fixable analyze`"
        )
    from fixable.analysis.pipeline import analyze, load_runs, write_analysis

    logger.info("analysing %s", directory)
    table, sources = load_runs([directory])
    analysis = analyze(
        table, sources=sources, config=config, model_info=model_info, progress=progress
    )
    write_analysis(analysis, directory)
    return analysis.result, analysis.failures, True


def render_figures(
    result: dict,
    failures: pd.DataFrame | None,
    out_dir: Path | None,
    *,
    formats: tuple[str, ...] = ("png", "pdf"),
    progress: Callable[[str], None] | None = None,
) -> list[RenderedFigure]:
    """Every figure of ``FIGURES``: drawn, saved under ``out_dir`` (when given) and kept as PNG bytes."""
    import io

    rendered = []
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    with report_style():
        for spec in FIGURES:
            if progress:
                progress(spec.name)
            try:
                fig = spec.draw(result, failures)
            except FigureUnavailable as e:
                rendered.append(RenderedFigure(spec.name, spec.title, "", unavailable=str(e)))
                continue
            caption = spec.caption(result, failures)
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=PNG_DPI)
            png = buffer.getvalue()
            width, height = _png_size(png)
            files = []
            if out_dir is not None:
                for fmt in formats:
                    path = out_dir / f"{spec.name}.{fmt}"
                    if fmt == "png":
                        path.write_bytes(png)
                    else:
                        fig.savefig(path, format=fmt)
                    files.append(path)
            # shown at 96 CSS pixels per inch (the PNG has 144): true size, crisp on dense screens
            rendered.append(
                RenderedFigure(
                    spec.name,
                    spec.title,
                    caption,
                    png=png,
                    width_px=width * 96 // PNG_DPI,
                    height_px=height * 96 // PNG_DPI,
                    files=tuple(str(p) for p in files),
                )
            )
    return rendered


def _png_size(png: bytes) -> tuple[int, int]:
    # the IHDR chunk: width and height as big-endian 32-bit integers at bytes 16–24
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def build_report(
    run_dir: str | Path,
    *,
    out: str | Path | None = None,
    reanalyze: bool = False,
    analysis_config=None,
    model_info: Mapping[str, Mapping] | None = None,
    formats: tuple[str, ...] = ("png", "pdf"),
    progress: Callable[[str], None] | None = None,
    control: str | Path | None = None,
) -> ReportFiles:
    """Write ``report.html``, ``summary.json`` and ``figures/*.png|pdf`` for a run.

    Args:
        run_dir: a run directory, or a directory holding analysis.json and failures.parquet.
        out: where to write (default: ``run_dir`` itself).
        reanalyze: recompute the analysis even when analysis.json is current.
        analysis_config / model_info: passed to the analysis when it is (re)computed.
        progress: called with the name of each stage ("analysis", a figure's name, "html").
        control: a run (or analysis directory) with a known-truth analysis (the planted
            testbed) shown as the report's positive control; default: the one the run's
            demo recorded (``manifest["demo"]["positive_control"]``), if any.
    """
    started = time.monotonic()
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StoreError(f"{run_dir} is not a directory; give a run directory (e.g. runs/demo)")
    out_dir = Path(out) if out is not None else run_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    if progress:
        progress("analysis")
    try:
        result, failures, analysed = ensure_analysis(
            run_dir, reanalyze=reanalyze, config=analysis_config, model_info=model_info
        )
    except DataError as e:
        raise DataError(f"cannot report on {run_dir}: {e}") from None
    figures_dir = out_dir / FIGURES_DIR
    rendered = render_figures(result, failures, figures_dir, formats=formats, progress=progress)
    # links in the page are relative to the page, so the folder can be moved or zipped whole
    for fig in rendered:
        fig.files = tuple(str(Path(p).relative_to(out_dir)) for p in fig.files)
    manifest = None
    if _is_run(run_dir):
        try:
            manifest = json.loads((run_dir / "manifest.json").read_text())
        except json.JSONDecodeError:
            manifest = None
    if progress:
        progress("html")
    label = run_dir.resolve().name
    control, control_source = _positive_control(run_dir, manifest, control)
    page = render_page(
        result,
        rendered,
        run_label=label,
        manifest=manifest,
        control=control,
        control_source=control_source,
    )
    html_path = out_dir / REPORT_FILE
    _write_text(html_path, page)
    files = {f.name: [out_dir / p for p in f.files] for f in rendered if f.png is not None}
    unavailable = {f.name: f.unavailable for f in rendered if f.unavailable}
    summary = build_summary(
        result,
        run=str(run_dir.resolve()),
        report_files={k: [str(p.relative_to(out_dir)) for p in v] for k, v in files.items()},
        unavailable=unavailable,
    )
    if control is not None:
        summary["positive_control"] = control_summary(control, control_source)
    elif result.get("recovery"):  # the run is a known-truth study itself
        summary["positive_control"] = control_summary(result, "this run")
    summary_path = out_dir / SUMMARY_FILE
    _write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return ReportFiles(
        html_path, summary_path, files, unavailable, analysed, time.monotonic() - started
    )


def control_summary(control: dict, source: str | None) -> dict:
    """The positive control's per-model router lift over best fixed and its nulls, and the
    truth's recovery (pooled), for summary.json."""
    per_model = {}
    for model, entry in ((control.get("routing") or {}).get("per_model") or {}).items():
        per_model[model] = {
            subset: {
                "n": block.get("n"),
                **{
                    strategy: (block.get("lift_over_best_fixed") or {}).get(strategy)
                    for strategy in ("routed", "shuffled_within_model", "random_shares", "oracle")
                },
            }
            for subset, block in (entry.get("subsets") or {}).items()
        }
    recovery = control.get("recovery") or {}
    return {
        "source": source,
        "what": "router - best fixed per model (points as fractions), on a testbed whose "
        "failure mechanisms are planted and known before sampling",
        "lift_over_best_fixed": per_model,
        "recovery": {
            column: {k: block.get(k) for k in ("n", "nmi", "ari", "purity", "null")}
            for column, block in (recovery.get("pooled") or {}).items()
        },
    }


def _positive_control(
    run_dir: Path, manifest: dict | None, control: str | Path | None
) -> tuple[dict | None, str | None]:
    """The known-truth analysis to show as the positive control, and where it came from."""
    explicit = control is not None
    if control is None:
        recorded = ((manifest or {}).get("demo") or {}).get("positive_control")
        if not recorded:
            return None, None
        control = Path(recorded)
        if not control.is_absolute():
            control = run_dir / control
    path = Path(control) / ANALYSIS_FILE
    if not path.is_file():
        if explicit:
            raise StoreError(
                f"no analysis.json in the positive-control directory {control}; analyse it "
                f"first (`fixable demo --config studies/planted.toml --out {control}`)"
            )
        logger.warning("no positive-control analysis at %s; the section is left out", path)
        return None, None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg}); re-run its analysis") from None
    return result, str(Path(control))


def _write_text(path: Path, text: str) -> None:
    # written under a temporary name and renamed, so a reader never sees half a report
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
