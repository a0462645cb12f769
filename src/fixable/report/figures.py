"""The report's figures, drawn from ``analysis.json`` and the per-failure table.

Each figure is a ``FigureSpec``: a name (the file stem of its PNG and PDF), a title, a
function that draws it and a function that writes its one-sentence caption (what to look
for, with the number that matters). A figure whose data the analysis does not hold (no
rescue phase, a single post-training method …) raises ``FigureUnavailable`` with the
reason, and the report says so in its place instead of drawing something empty.

Figures are ``matplotlib.figure.Figure`` objects built without pyplot, so drawing them
needs no display and leaves no global state behind.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.colors import LinearSegmentedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from fixable.analysis.paper import topography_text
from fixable.features import axis_feature, signature_features
from fixable.interventions import sort_key
from fixable.report.style import (
    FAMILY_MARKERS,
    METHOD_ORDER,
    REGIME_COLORS,
    REGIME_ORDER,
    STRATEGY_NAMES,
    STRATEGY_ORDER,
    color_of,
    feature_name,
    ordered,
)

logger = logging.getLogger(__name__)

_RESCUE_COLUMN = re.compile(r"^rescue\[(.+)\]$")
RATE_CMAP = LinearSegmentedColormap.from_list(
    "rescue", ["#FFFFFF", "#C6DBEF", "#6BAED6", "#2171B5", "#08306B"]
)
SHARE_CMAP = LinearSegmentedColormap.from_list(
    "share", ["#FFFFFF", "#FDD0A2", "#F16913", "#7F2704"]
)


class FigureUnavailable(Exception):
    """The analysis holds nothing this figure could show; the message says why."""


@dataclass(frozen=True)
class FigureSpec:
    name: str  # file stem: figures/<name>.png and .pdf
    title: str
    draw: Callable[[dict, pd.DataFrame | None], Figure]
    caption: Callable[[dict, pd.DataFrame | None], str]


# --------------------------------------------------------------------------- helpers


def _pct(x, digits: int = 1) -> str:
    return (
        "n/a"
        if x is None or (isinstance(x, float) and math.isnan(x))
        else f"{x * 100:.{digits}f} %"
    )


def _pts(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:+.{digits}f} points"


def _label_cells(ax, shades: np.ndarray, text: Callable[[int, int], str]) -> None:
    """Write text(i, j) on each finite cell of a 0..1 heatmap, white on the dark cells."""
    for i, j in zip(*np.nonzero(np.isfinite(shades)), strict=True):
        ax.text(
            j,
            i,
            text(i, j),
            ha="center",
            va="center",
            fontsize=8,
            color="white" if shades[i, j] > 0.55 else "#222222",
        )


def _get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d or d[key] is None:
            return default
        d = d[key]
    return d


def setting_order(setting: str) -> tuple:
    """Sort key of a setting label: kinds in the order ``fixable.interventions`` declares
    them (retry first), then by parameter."""
    return sort_key(setting)


def rescue_settings(failures: pd.DataFrame) -> list[str]:
    """The settings with a rescue-rate column in the per-failure table, in display order."""
    settings = [m.group(1) for c in failures.columns if (m := _RESCUE_COLUMN.match(str(c)))]
    return sorted(settings, key=setting_order)


def _need_failures(failures: pd.DataFrame | None, columns=()) -> pd.DataFrame:
    if failures is None or failures.empty:
        raise FigureUnavailable("the analysis holds no per-failure table (failures.parquet)")
    missing = [c for c in columns if c not in failures.columns]
    if missing:
        raise FigureUnavailable(f"the per-failure table lacks {', '.join(missing)}")
    return failures


def _labels(failures: pd.DataFrame) -> pd.Series:
    if "label" not in failures.columns:
        return pd.Series(["unlabelled"] * len(failures), index=failures.index)
    return failures["label"].where(failures["label"].notna(), "unlabelled").astype(str)


def _available_features(failures: pd.DataFrame) -> list[str]:
    return [f for f in signature_features() if f in failures.columns and failures[f].notna().any()]


def _jitter(values: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    # answer dispersion takes few distinct values (K answers); a fixed-seed jitter keeps
    # overlapping points visible and the figure identical from one report to the next
    rng = np.random.default_rng(seed)
    return values + rng.uniform(-scale, scale, size=len(values))


def _regime_legend(ax, labels: pd.Series, **kwargs) -> None:
    counts = labels.value_counts()
    names = ordered(counts.index, (*REGIME_ORDER, "unlabelled"))
    handles = [
        Line2D(
            [],
            [],
            marker="o",
            ls="",
            color=REGIME_COLORS.get(n, "#999999"),
            markersize=6,
            label=f"{n} ({counts[n]})",
        )
        for n in names
    ]
    ax.legend(handles=handles, **kwargs)


# --------------------------------------------------------------------------- regime map


def draw_regime_map(result: dict, failures: pd.DataFrame | None) -> Figure:
    failures = _need_failures(failures)
    features = _available_features(failures)
    # answer dispersion (the retry axis) across, the other axes' features up
    across = axis_feature("retry")
    if across not in features or len(features) < 2:
        raise FigureUnavailable(
            "fewer than two features available (reference drift needs a reference model, "
            "trajectory uncertainty needs entropies)"
        )
    others = [f for f in (axis_feature("reference"), axis_feature("temperature")) if f in features]
    labels = _labels(failures)
    uncertain = (
        failures["uncertain"].fillna(False).astype(bool).to_numpy()
        if "uncertain" in failures.columns
        else np.zeros(len(failures), bool)
    )
    fig = Figure(figsize=(5.2 * len(others), 4.4), layout="constrained")
    axes = fig.subplots(1, len(others), squeeze=False)[0]
    x = _jitter(failures[across].to_numpy(float), 0.025)
    size = 16 if len(failures) < 400 else (9 if len(failures) < 2000 else 5)
    draw_order = ordered(
        labels.unique(),
        ("unlabelled", "structural", "resamplable", "steerable-weak", "steerable-hard"),
    )
    for ax, feature in zip(axes, others, strict=True):
        y = failures[feature].to_numpy(float)
        for name in draw_order:
            # failures nothing fixes are the background; the others are drawn on top
            background = name in ("structural", "unlabelled")
            for is_uncertain in (True, False):
                mask = (labels.to_numpy() == name) & (uncertain == is_uncertain)
                if not mask.any():
                    continue
                color = REGIME_COLORS.get(name, "#999999")
                if is_uncertain:  # faint: the label's interval straddles a threshold
                    alpha = 0.25 if background else 0.45
                    ax.scatter(x[mask], y[mask], s=size, color=color, alpha=alpha, linewidths=0)
                else:
                    ax.scatter(
                        x[mask],
                        y[mask],
                        s=size * 1.6,
                        color=color,
                        alpha=0.95,
                        edgecolors="#222222",
                        linewidths=0.4,
                    )
        ax.set_xlabel(feature_name(across))
        ax.set_ylabel(feature_name(feature))
        ax.grid(axis="x", color="#EFEFEF")
        ax.set_xlim(-0.05, 1.05)
    _regime_legend(axes[-1], labels, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="label (n)")
    if uncertain.any():
        # a figure-level note: inside an axes it would push the panels apart
        fig.text(
            0.01,
            -0.01,
            f"faint: uncertain label, its interval straddles a threshold ({int(uncertain.sum())} of "
            f"{len(uncertain)}); outlined: certain",
            fontsize=8,
            color="#666666",
            va="top",
        )
    return fig


def caption_regime_map(result: dict, failures: pd.DataFrame | None) -> str:
    nmi = _get(result, "regimes", "gmm", "agreement", "nmi")
    tail = f" (the GMM's regimes agree with the labels at NMI {nmi:.2f})" if nmi is not None else ""
    return (
        "Each dot is one failure placed by its signature from the failed probes alone; look for "
        "the colours — what actually rescued it — to occupy separate regions, which is what makes "
        f"routing without trying every intervention possible{tail}."
    )


# --------------------------------------------------------------------------- rescue matrix


def draw_rescue_matrix(result: dict, failures: pd.DataFrame | None) -> Figure:
    failures = _need_failures(failures)
    settings = rescue_settings(failures)
    if not settings:
        raise FigureUnavailable("no rescue phase in the run (run the rescue sweep first)")
    labels = _labels(failures)
    rates = failures[[f"rescue[{s}]" for s in settings]].to_numpy(float)
    rank = {n: i for i, n in enumerate((*REGIME_ORDER, "unlabelled"))}
    best = np.where(
        np.isnan(rates).all(axis=1), -1, np.nanargmax(np.nan_to_num(rates, nan=-1), axis=1)
    )
    order = np.lexsort(
        (
            -np.nanmax(np.nan_to_num(rates, nan=0), axis=1),
            best,
            labels.map(lambda n: rank.get(n, 9)).to_numpy(),
        )
    )
    rates, sorted_labels = rates[order], labels.to_numpy()[order]
    present = ordered(pd.unique(sorted_labels), (*REGIME_ORDER, "unlabelled"))
    means = np.array(
        [
            [
                np.nanmean(rates[sorted_labels == n, j]) if (sorted_labels == n).any() else np.nan
                for j in range(len(settings))
            ]
            for n in present
        ]
    )

    width = max(7.5, 2.2 + 0.62 * len(settings) * 2)
    fig = Figure(figsize=(width, 5.2), layout="constrained")
    grid = fig.add_gridspec(1, 3, width_ratios=[0.06, 1, 1.05], wspace=0.02)
    strip, heat, table = (
        fig.add_subplot(grid[0]),
        fig.add_subplot(grid[1]),
        fig.add_subplot(grid[2]),
    )
    colors = np.array([REGIME_COLORS.get(n, "#999999") for n in sorted_labels])
    from matplotlib.colors import to_rgb

    strip.imshow(
        np.array([to_rgb(c) for c in colors])[:, None, :], aspect="auto", interpolation="nearest"
    )
    strip.set_xticks([])
    strip.set_yticks([])
    strip.set_ylabel(f"{len(rates)} failures, grouped by label", fontsize=8.5)
    for spine in strip.spines.values():
        spine.set_visible(False)
    image = heat.imshow(
        rates, aspect="auto", interpolation="nearest", cmap=RATE_CMAP, vmin=0, vmax=1
    )
    heat.set_xticks(range(len(settings)), settings, rotation=40, ha="right")
    heat.set_yticks([])
    heat.grid(False)
    heat.set_title("per failure", fontsize=9.5, fontweight="normal")
    table.imshow(means, aspect="auto", cmap=RATE_CMAP, vmin=0, vmax=1)
    _label_cells(table, means, lambda i, j: f"{means[i, j]:.2f}")
    n_per = pd.Series(sorted_labels).value_counts()
    table.set_yticks(range(len(present)), [f"{n}\n(n={n_per.get(n, 0)})" for n in present])
    for tick, name in zip(table.get_yticklabels(), present, strict=True):
        tick.set_color(REGIME_COLORS.get(name, "#444444"))
    table.set_xticks(range(len(settings)), settings, rotation=40, ha="right")
    table.grid(False)
    table.set_title("mean rescue rate per label", fontsize=9.5, fontweight="normal")
    fig.colorbar(
        image, ax=[heat, table], shrink=0.8, label="rescue rate (share of R rollouts correct)"
    )
    return fig


def caption_rescue_matrix(result: dict, failures: pd.DataFrame | None) -> str:
    r = _get(result, "data", "R_label", "min") or _get(result, "data", "R", "min")
    rr = f"{r} labelling-part rollouts" if r else "R rollouts"
    return (
        f"The ground truth: each cell is the share of {rr} that an intervention setting got right "
        "on a failure the probe could not solve; look for the rows that are dark only away from "
        "retry — those failures need a specific intervention, not more samples."
    )


# --------------------------------------------------------------------------- rescue curves


def draw_rescue_curves(result: dict, failures: pd.DataFrame | None) -> Figure:
    curves = _get(result, "routing", "curves")
    if not curves or not curves.get("budgets"):
        raise FigureUnavailable(
            _skip_reason(result, "routing", "no routing evaluation in the analysis")
        )
    budgets = np.asarray(curves["budgets"], float)
    subsets = [s for s in ("all", "steerable-hard") if s in curves and curves[s]]
    subsets += [s for s in curves if s not in ("budgets", *subsets) and curves[s]]
    fig = Figure(figsize=(5.0 * len(subsets) + 1.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(subsets), squeeze=False, sharey=True)[0]
    headline = _get(result, "routing", "budget_samples")
    for ax, subset in zip(axes, subsets, strict=True):
        per = curves[subset]
        for i, strategy in enumerate(ordered(per, STRATEGY_ORDER)):
            v = per[strategy]
            value = np.asarray([np.nan if x is None else x for x in v["value"]], float)
            color = color_of("strategy", strategy, i)
            style = {"routed": dict(lw=2.4, zorder=5), "oracle": dict(lw=1.4, ls="--")}.get(
                strategy, dict(lw=1.5)
            )
            ax.plot(
                budgets, value, color=color, label=STRATEGY_NAMES.get(strategy, strategy), **style
            )
            if v.get("low") is not None and v.get("high") is not None:
                low = np.asarray([np.nan if x is None else x for x in v["low"]], float)
                high = np.asarray([np.nan if x is None else x for x in v["high"]], float)
                ax.fill_between(
                    budgets,
                    low,
                    high,
                    color=color,
                    alpha=0.13 if strategy == "routed" else 0.08,
                    linewidth=0,
                )
        if headline:
            ax.axvline(headline, color="#888888", lw=0.8, ls=":")
            ax.text(
                headline,
                1.0,
                f" budget {headline:g}",
                transform=ax.get_xaxis_transform(),
                fontsize=7.5,
                color="#666666",
                va="top",
            )
        n = _get(result, "routing", "subsets", subset, "n")
        ax.set_title(f"{subset} failures" + (f" (n={n})" if n else ""), fontsize=10)
        ax.set_xlabel("extra budget per failure (retry-equivalent samples)")
        ax.set_xlim(budgets.min(), budgets.max())
        ax.set_ylim(-0.02, 1.02)  # lines at 0 (retry on steerable-hard) stay visible
    axes[0].set_ylabel("share of failures rescued")
    axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def caption_rescue_curves(result: dict, failures: pd.DataFrame | None) -> str:
    lift = _get(result, "routing", "subsets", "steerable-hard", "lift", "best_fixed")
    budget = _get(result, "routing", "budget_samples")
    if lift and lift.get("value") is not None:
        detail = (
            f"; on steerable-hard failures at budget {budget:g} the router is "
            f"{_pts(lift['value'])} above the best fixed intervention "
            f"[{_pts(lift['low'])}, {_pts(lift['high'])}]"
        )
    else:
        detail = ""
    return (
        "Rescue at a matched compute budget (mix charged double) on the scoring part, with "
        "hierarchical bootstrap 95 % bands; look for the black router curve above every "
        "baseline and above its within-model shuffle, and close to the dashed oracle"
        f"{detail}."
    )


# --------------------------------------------------------------------------- topography


def draw_topography_confusion(result: dict, failures: pd.DataFrame | None) -> Figure:
    topo = result.get("topography")
    if not topo or not _get(topo, "confusion", "matrix"):
        raise FigureUnavailable(_skip_reason(result, "topography", "no topography in the analysis"))
    labels = list(topo["confusion"]["labels"])
    counts = np.asarray(topo["confusion"]["matrix"], float)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(1.3 * len(labels) + 2.6, 1.1 * len(labels) + 1.6), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap=SHARE_CMAP, vmin=0, vmax=1)
    _label_cells(ax, shares, lambda i, j: f"{shares[i, j] * 100:.0f} %\n({int(counts[i, j])})")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
        for tick, name in zip(ticks, labels, strict=True):
            tick.set_color(color_of("method", name))
            tick.set_fontweight("bold")
    ax.set_xlabel("predicted post-training method")
    ax.set_ylabel("true post-training method")
    ax.grid(False)
    acc = _get(topo, "classifier", "accuracy", "mean")
    maj = _get(topo, "majority", "accuracy", "mean")
    if acc is not None:
        ax.set_title(f"accuracy {_pct(acc)} (majority class {_pct(maj)})", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true method's failures")
    return fig


def caption_topography_confusion(result: dict, failures: pd.DataFrame | None) -> str:
    topo = result.get("topography") or {}
    acc = _get(topo, "classifier", "accuracy")
    maj = _get(topo, "majority", "accuracy", "mean")
    detail = ""
    if acc:
        detail = (
            f": {_pct(acc['mean'])} ± {_pct(acc['std'])} across held-out models against "
            f"{_pct(maj)} for the majority class and "
            f"{_pct(_get(topo, 'null', 'mean'))} for methods permuted across models "
            f"(paper, on its models: {topography_text(result.get('paper'))})"
        )
    return (
        "Which post-training method produced a failure, predicted from its three features alone "
        f"on models the classifier never saw (held-out models); look for a strong diagonal{detail}."
    )


# --------------------------------------------------------------------------- stability


def draw_cluster_stability(result: dict, failures: pd.DataFrame | None) -> Figure:
    regimes = result.get("regimes") or {}
    methods = [m for m in ("gmm", "kmeans") if isinstance(regimes.get(m), dict)]
    if not methods:
        raise FigureUnavailable(
            regimes.get("skipped")
            or _skip_reason(result, "regimes", "no clustering in the analysis")
        )
    metrics = [
        ("bootstrap ARI", lambda r: _interval_of(_get(r, "bootstrap_stability"))),
        ("probe-split ARI", lambda r: (_get(r, "probe_split_stability", "ari"), None, None)),
        ("NMI with labels", lambda r: (_get(r, "agreement", "nmi"), None, None)),
        ("purity", lambda r: (_get(r, "agreement", "purity"), None, None)),
    ]
    fig = Figure(figsize=(11.5, 4.2), layout="constrained")
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.1, 1]})
    width = 0.8 / len(methods)
    names = {"gmm": "GMM (BIC-chosen k)", "kmeans": "k-means (silhouette-chosen k)"}
    shades = {"gmm": "#3F4A5A", "kmeans": "#9AA5B5"}
    for i, method in enumerate(methods):
        values = [fn(regimes[method]) for _, fn in metrics]
        xs = np.arange(len(metrics)) + (i - (len(methods) - 1) / 2) * width
        heights = [np.nan if v[0] is None else v[0] for v in values]
        left.bar(
            xs,
            heights,
            width * 0.92,
            color=shades[method],
            label=f"{names[method]}: k={regimes[method].get('n_regimes')}",
        )
        for x, (v, lo, hi) in zip(xs, values, strict=True):
            if v is None:
                continue
            if lo is not None and hi is not None:
                left.errorbar(x, v, yerr=[[v - lo], [hi - v]], color="#111111", capsize=3, lw=1)
            left.text(
                x, (hi if hi is not None else v) + 0.02, f"{v:.2f}", ha="center", fontsize=7.5
            )
    left.set_xticks(range(len(metrics)), [m for m, _ in metrics])
    left.set_ylim(0, 1.12)
    left.set_ylabel("score (1 = identical partitions)")
    left.set_title("stability and agreement with the labels", fontsize=10)
    left.legend(loc="upper right", fontsize=8)

    method = methods[0]
    mix = _get(regimes, method, "labels_per_regime") or {}
    if mix:
        clusters = sorted(mix, key=lambda k: int(k) if str(k).isdigit() else str(k))
        label_names = ordered({n for c in clusters for n in mix[c]}, (*REGIME_ORDER, "unlabelled"))
        totals = np.array([sum(mix[c].values()) for c in clusters], float)
        bottom = np.zeros(len(clusters))
        for name in label_names:
            share = np.array([mix[c].get(name, 0) for c in clusters], float) / np.maximum(totals, 1)
            right.barh(
                range(len(clusters)),
                share,
                left=bottom,
                color=REGIME_COLORS.get(name, "#999999"),
                label=name,
                height=0.7,
            )
            bottom += share
        right.set_yticks(
            range(len(clusters)),
            [f"regime {c}\n(n={int(t)})" for c, t in zip(clusters, totals, strict=True)],
        )
        right.invert_yaxis()
        right.set_xlim(0, 1)
        right.set_xlabel("share of the regime's failures")
        right.grid(axis="x", color="#E6E6E6")
        right.grid(axis="y", visible=False)
        right.set_title(f"what the {names[method].split(' ')[0]} regimes contain", fontsize=10)
        right.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="label")
    else:
        right.set_axis_off()
    return fig


def caption_cluster_stability(result: dict, failures: pd.DataFrame | None) -> str:
    b = _get(result, "regimes", "gmm", "bootstrap_stability")
    detail = (
        f" (GMM bootstrap ARI {b['value']:.2f}, 95 % range {b['low']:.2f}–{b['high']:.2f})"
        if b and b.get("value") is not None
        else ""
    )
    return (
        "Regimes found without labels must come back when problems are resampled and when the K "
        f"probes are split; look for high ARI bars{detail} and regimes dominated by one colour."
    )


def _interval_of(estimate) -> tuple:
    if not isinstance(estimate, dict):
        return (None, None, None)
    return (estimate.get("value"), estimate.get("low"), estimate.get("high"))


# --------------------------------------------------------------------------- features per method


def draw_feature_distributions(result: dict, failures: pd.DataFrame | None) -> Figure:
    failures = _need_failures(failures, ["method"])
    features = _available_features(failures)
    methods = [m for m in failures["method"].dropna().unique()]
    if len(methods) < 1 or not features:
        raise FigureUnavailable(
            "no post-training method metadata for the models (zoo card or --model-info)"
        )
    methods = ordered(methods, (*METHOD_ORDER, "base"))
    fig = Figure(figsize=(4.1 * len(features), 3.9), layout="constrained")
    axes = fig.subplots(1, len(features), squeeze=False)[0]
    families = (
        [f for f in failures["family"].dropna().unique()] if "family" in failures.columns else []
    )
    for ax, feature in zip(axes, features, strict=True):
        data = [
            failures.loc[failures["method"] == m, feature].dropna().to_numpy(float) for m in methods
        ]
        boxes = ax.boxplot(
            data,
            positions=range(len(methods)),
            widths=0.55,
            showfliers=False,
            patch_artist=True,
            medianprops=dict(color="#111111", lw=1.4),
            whiskerprops=dict(color="#777777"),
            capprops=dict(color="#777777"),
        )
        for patch, m in zip(boxes["boxes"], methods, strict=True):
            patch.set_facecolor(color_of("method", m))
            patch.set_alpha(0.28)
            patch.set_edgecolor(color_of("method", m))
        for i, m in enumerate(methods):
            rows = failures[(failures["method"] == m) & failures[feature].notna()]
            if rows.empty:
                continue
            x = _jitter(np.full(len(rows), float(i)), 0.2, seed=i)
            if feature == "answer_dispersion":
                y = _jitter(rows[feature].to_numpy(float), 0.01, seed=100 + i)
            else:
                y = rows[feature].to_numpy(float)
            fams = (
                rows["family"].to_numpy()
                if "family" in rows.columns
                else np.array([None] * len(rows))
            )
            for fam in pd.unique(fams):
                mask = fams == fam
                ax.scatter(
                    x[mask],
                    y[mask],
                    s=5 if len(failures) > 1500 else 9,
                    color=color_of("method", m),
                    alpha=0.45,
                    linewidths=0,
                    marker=FAMILY_MARKERS.get(fam, "o"),
                )
        ax.set_xticks(range(len(methods)), methods)
        for tick, m in zip(ax.get_xticklabels(), methods, strict=True):
            tick.set_color(color_of("method", m))
            tick.set_fontweight("bold")
        ax.set_title(feature_name(feature), fontsize=10)
    if len(families) > 1:
        handles = [
            Line2D([], [], marker=FAMILY_MARKERS.get(f, "o"), ls="", color="#555555", label=f)
            for f in sorted(families)
        ]
        axes[-1].legend(
            handles=handles, title="family", loc="upper left", bbox_to_anchor=(1.01, 1.0)
        )
    return fig


def caption_feature_distributions(result: dict, failures: pd.DataFrame | None) -> str:
    return (
        "The failures each post-training method leaves behind, feature by feature (boxes: quartiles "
        "and median); look for methods whose boxes sit apart — that is what the topography "
        "classifier reads."
    )


# --------------------------------------------------------------------------- label shares


def draw_label_shares(result: dict, failures: pd.DataFrame | None) -> Figure:
    labels = result.get("labels")
    if not labels or not labels.get("regimes"):
        raise FigureUnavailable(
            _skip_reason(result, "labels", "no regime labels (no rescue phase)")
        )
    per_model = labels.get("per_model") or {}
    rows = [("all failures", labels)] + sorted(per_model.items(), key=lambda kv: _model_sort(kv[0]))
    fig = Figure(figsize=(9.5, 0.36 * len(rows) + 1.5), layout="constrained")
    ax = fig.subplots()
    for y, (_, block) in enumerate(rows):
        left = 0.0
        for regime in REGIME_ORDER:
            share = _get(block, "regimes", regime, "all", "value") or 0.0
            ax.barh(
                y,
                share,
                left=left,
                color=REGIME_COLORS[regime],
                height=0.72,
                label=regime if y == 0 else None,
            )
            if share >= 0.07:
                ax.text(
                    left + share / 2,
                    y,
                    f"{share * 100:.0f}",
                    ha="center",
                    va="center",
                    fontsize=7.5,
                    color="white",
                )
            left += share
        n = block.get("n_failures")
        ax.text(
            1.01,
            y,
            f"n={n}",
            va="center",
            fontsize=7.5,
            color="#555555",
            transform=ax.get_yaxis_transform(),
        )
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.get_yticklabels()[0].set_fontweight("bold")
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the model's failures (%, labels from the rescue sweep)")
    ax.grid(axis="y", visible=False)
    ax.grid(axis="x", color="#E6E6E6")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 - 0.2 / max(len(rows), 1)), ncol=4)
    return fig


def caption_label_shares(result: dict, failures: pd.DataFrame | None) -> str:
    sh = _get(result, "labels", "regimes", "steerable-hard", "all")
    detail = ""
    if sh and sh.get("value") is not None:
        detail = (
            f"; overall {_pct(sh['value'])} of failures are steerable-hard "
            f"[{_pct(sh['low'])}, {_pct(sh['high'])}]"
        )
    return (
        "What fixes each model's failures, by the rescue sweep's labels; look for models whose "
        f"failures are mostly vermilion — there, sampling more is the wrong remedy{detail}."
    )


def _model_sort(name: str) -> tuple:
    parts = name.split("-")
    method = parts[1] if len(parts) > 1 else ""
    return (parts[0], METHOD_ORDER.index(method) if method in METHOD_ORDER else 9, name)


# --------------------------------------------------------------------------- transfer


def draw_transfer(result: dict, failures: pd.DataFrame | None) -> Figure:
    pairs = _get(result, "transfer", "pairs")
    if not pairs:
        raise FigureUnavailable(_skip_reason(result, "transfer", "no transfer in the analysis"))
    names = [f"{p['source']} → {p['target']}" for p in pairs]
    panels = [
        ("method classifier accuracy", lambda p: _get(p, "classifier", "accuracy"), "majority"),
        ("rescue at the headline budget", None, None),
    ]
    fig = Figure(figsize=(11.5, 3.9), layout="constrained")
    left, right = fig.subplots(1, 2)
    xs = np.arange(len(pairs))
    for x, p in zip(xs, pairs, strict=True):
        e = _get(p, "classifier", "accuracy")
        hatch = None if p.get("in_family") else "///"
        if e and e.get("value") is not None:
            left.bar(
                x,
                e["value"],
                0.6,
                color="#3F4A5A" if p.get("in_family") else "#9AA5B5",
                hatch=hatch,
                edgecolor="white",
            )
            left.errorbar(
                x,
                e["value"],
                yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]],
                color="#111111",
                capsize=3,
                lw=1,
            )
        maj = _get(p, "classifier", "majority_share")
        if maj is not None:
            left.plot([x - 0.35, x + 0.35], [maj, maj], color="#D55E00", lw=1.5)
    left.set_xticks(xs, names)
    left.set_ylim(0, 1)
    left.set_ylabel("accuracy")
    left.set_title(panels[0][0], fontsize=10)
    left.legend(
        handles=[
            Patch(color="#3F4A5A", label="in family (cross-validated)"),
            Patch(facecolor="#9AA5B5", hatch="///", edgecolor="white", label="across families"),
            Line2D([], [], color="#D55E00", label="majority class"),
        ],
        loc="upper right",
        fontsize=7.5,
    )
    width = 0.38
    for x, p in zip(xs, pairs, strict=True):
        for offset, key, strategy in (
            (-width / 2, "router_thresholds", "routed"),
            (width / 2, "best_fixed", "best_fixed"),
        ):
            e = _get(p, key, "rescue")
            if not e or e.get("value") is None:
                continue
            right.bar(
                x + offset,
                e["value"],
                width * 0.92,
                color=color_of("strategy", strategy),
                alpha=1.0 if p.get("in_family") else 0.6,
                hatch=None if p.get("in_family") else "///",
                edgecolor="white",
            )
            right.errorbar(
                x + offset,
                e["value"],
                yerr=[[e["value"] - e["low"]], [e["high"] - e["value"]]],
                color="#444444",
                capsize=2.5,
                lw=0.9,
            )
    right.set_xticks(xs, names)
    right.set_ylim(0, 1)
    right.set_ylabel("share of target failures rescued")
    right.set_title(panels[1][0], fontsize=10)
    right.legend(
        handles=[
            Patch(color=color_of("strategy", "routed"), label="router (source thresholds)"),
            Patch(color=color_of("strategy", "best_fixed"), label="best fixed (chosen on source)"),
        ],
        loc="upper right",
        fontsize=7.5,
    )
    return fig


def caption_transfer(result: dict, failures: pd.DataFrame | None) -> str:
    return (
        "Everything fitted or chosen on one model family (standardisation, classifier, best fixed "
        "intervention, router thresholds) evaluated on the other; look for the hatched cross-family "
        "bars to stay near the solid in-family ones."
    )


# --------------------------------------------------------------------------- registry


def _skip_reason(result: dict, stage: str, default: str) -> str:
    return _get(result, "skipped", stage) or default


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec("regime_map", "Regime map", draw_regime_map, caption_regime_map),
    FigureSpec("rescue_matrix", "Rescue matrix", draw_rescue_matrix, caption_rescue_matrix),
    FigureSpec(
        "label_shares", "What fixes each model's failures", draw_label_shares, caption_label_shares
    ),
    FigureSpec(
        "rescue_curves", "Rescue at a matched budget", draw_rescue_curves, caption_rescue_curves
    ),
    FigureSpec(
        "topography_confusion",
        "Topography: which method left this failure?",
        draw_topography_confusion,
        caption_topography_confusion,
    ),
    FigureSpec(
        "feature_distributions",
        "Feature distributions per post-training method",
        draw_feature_distributions,
        caption_feature_distributions,
    ),
    FigureSpec(
        "cluster_stability", "Cluster stability", draw_cluster_stability, caption_cluster_stability
    ),
    FigureSpec("transfer", "Transfer across model families", draw_transfer, caption_transfer),
)
