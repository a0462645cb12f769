"""The report against independent oracles: figures are not blank and carry the numbers
they claim; summary.json's label shares are the shares counted in the per-failure table.

A PNG's magic bytes say nothing about what is drawn: an empty figure has them too. Here
every figure of a planted analysis is decoded and must show ink (pixel variance) and data
(coloured pixels: frames, ticks and text are grey, the data are drawn in colour, so an
empty set of axes has none), and the rescue matrix and label shares, drawn from
hand-built inputs, must write the numbers worked out in the test.
"""

from __future__ import annotations

import io

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from fixable.analysis.pipeline import AnalysisConfig, analyze
from fixable.analysis.synthetic import planted_rollouts
from fixable.report.build import render_figures
from fixable.report.figures import FIGURES, draw_label_shares, draw_rescue_matrix
from fixable.report.summary import build_summary

MODELS = ("gpt-sft-s0", "gpt-rl-s0", "llama-sft-s0", "llama-rl-s0")
INFO = {m: {"family": m.split("-")[0], "method": m.split("-")[1], "seed": 0} for m in MODELS}
FAST = AnalysisConfig(n_boot=40, stability_boot=4, n_seeds=2, n_splits=3)


def ink(png: bytes) -> tuple[float, float]:
    """(grey-level variance, share of coloured pixels: saturation max-min RGB > 0.15)."""
    rgb = matplotlib.image.imread(io.BytesIO(png), format="png")[..., :3]
    saturation = rgb.max(axis=-1) - rgb.min(axis=-1)
    return float(rgb.mean(axis=-1).var()), float((saturation > 0.15).mean())


def png_of(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    return buffer.getvalue()


def test_the_blank_check_rejects_a_blank_and_an_empty_axes_figure():
    blank = Figure(figsize=(4, 3))
    assert ink(png_of(blank)) == (0.0, 0.0)
    axes_only = Figure(figsize=(4, 3))
    axes_only.subplots()
    variance, share = ink(png_of(axes_only))
    assert variance > 0 and share == 0.0  # a frame and tick labels: ink, but no data


@pytest.fixture(scope="module")
def analysis():
    table, _ = planted_rollouts(MODELS, n_failures=15, n_solved=2, r=16, seed=3)
    return analyze(table, model_info=INFO, config=FAST)


@pytest.fixture(scope="module")
def rendered(analysis):
    return render_figures(analysis.result, analysis.failures, None, formats=("png",))


def test_every_figure_of_a_planted_analysis_is_drawn_and_not_blank(rendered):
    assert [f.name for f in rendered] == [spec.name for spec in FIGURES]
    for figure in rendered:
        assert figure.png is not None, (figure.name, figure.unavailable)
        variance, share = ink(figure.png)
        assert variance > 1e-3, figure.name
        assert share > 0.002, (figure.name, share)  # the sparsest, regime_map: 0.5 %


def test_rescue_matrix_shows_the_rates_and_the_per_label_means():
    rates = {
        "retry": [0.0, 0.5, 0.25, 0.0],
        "temperature(T=0.3)": [1.0, 0.0, 0.75, 0.125],
    }
    labels = ["steerable-hard", "resamplable", "steerable-hard", "structural"]
    failures = pd.DataFrame(
        {
            "model": ["m"] * 4,
            "problem_id": list("abcd"),
            "label": labels,
            **{f"rescue[{s}]": v for s, v in rates.items()},
        }
    )
    fig = draw_rescue_matrix({}, failures)
    # per-label means by a direct loop: steerable-hard rows a and c
    expected = set()
    for label in set(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        for values in rates.values():
            expected.add(f"{sum(values[i] for i in rows) / len(rows):.2f}")
    written = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert expected <= written, (expected, written)
    assert "0.88" in written  # (1.0 + 0.75) / 2 for steerable-hard at T=0.3
    # the per-failure heat map holds every rate, in some row order
    heat = next(ax for ax in fig.axes if ax.get_title() == "per failure")
    shown = np.asarray(heat.images[0].get_array())
    assert sorted(map(tuple, shown.tolist())) == sorted(zip(*rates.values(), strict=True))
    variance, share = ink(png_of(fig))
    assert variance > 1e-3 and share > 0.002


def test_label_shares_writes_each_share_it_draws():
    def block(shares, n):
        return {
            "n_failures": n,
            "regimes": {r: {"all": {"value": v}} for r, v in shares.items()},
        }

    shares = {"resamplable": 0.5, "steerable-hard": 0.25, "steerable-weak": 0.05, "structural": 0.2}
    result = {"labels": block(shares, 20) | {"per_model": {"m": block(shares, 20)}}}
    fig = draw_label_shares(result, None)
    written = [t.get_text() for t in fig.axes[0].texts]
    # shares of 7 % and more are written as percentages; 5 % is too narrow to label
    assert sorted(written) == sorted(["50", "25", "20", "n=20"] * 2)
    bars = [p.get_width() for p in fig.axes[0].patches]
    assert sorted(bars) == pytest.approx(sorted(list(shares.values()) * 2))


def _wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def test_summary_label_shares_are_the_shares_counted_in_the_failure_table(analysis):
    summary = build_summary(analysis.result, run="planted")
    labels = analysis.failures["label"]
    labelled = labels.notna().sum()
    assert labelled == len(labels) == 60  # 4 models x 15 planted failures, all labelled
    for regime in ("resamplable", "steerable-hard", "steerable-weak", "structural"):
        count = int((labels == regime).sum())
        got = summary["estimates"][f"labels.regimes.{regime}.all"]
        assert (got["count"], got["n"]) == (count, labelled), regime
        assert got["value"] == pytest.approx(count / labelled)
        assert (got["low"], got["high"]) == pytest.approx(_wilson(count, labelled))
    for model, part in analysis.failures.groupby("model"):
        got = summary["estimates"][f"labels.per_model.{model}.regimes.steerable-hard.all"]
        assert got["count"] == int((part["label"] == "steerable-hard").sum())
        assert got["n"] == int(part["label"].notna().sum())
