"""The report's look: one colour per regime, post-training method and routing strategy, and
a quiet matplotlib style, so the same thing has the same colour in every figure.

Colours come from a colour-blind-safe palette (Okabe–Ito, plus neutral greys); regime
colours follow the story of the labels: blue for failures more samples fix, warm colours
for failures an intervention fixes, grey for failures nothing fixes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

REGIME_COLORS = {
    "resamplable": "#0072B2",  # blue: more samples fix it
    "steerable-hard": "#D55E00",  # vermilion: only an intervention fixes it
    "steerable-weak": "#E69F00",  # orange: an intervention helps a little
    "structural": "#6B6B6B",  # grey: nothing fixes it
    "unlabelled": "#BDBDBD",
}
METHOD_COLORS = {
    "sft": "#009E73",  # bluish green
    "rl": "#CC79A7",  # reddish purple
    "distill": "#56B4E9",  # sky blue
    "rft": "#E69F00",  # orange
    "sftb": "#0072B2",  # blue: SFT on broad data (the fair topography zoo)
    "base": "#333333",
}
STRATEGY_COLORS = {
    "routed": "#111111",
    "oracle": "#9E9E9E",
    "retry": "#0072B2",
    "best_fixed": "#009E73",
    "uniform": "#CC79A7",
    "random": "#E69F00",
    "random_shares": "#F0E442",
    "shuffled_within_model": "#D55E00",
    "routed_charged": "#555555",
}
STRATEGY_NAMES = {
    "routed": "signature router",
    "oracle": "oracle (best per failure)",
    "retry": "retry only",
    "best_fixed": "best fixed intervention",
    "uniform": "uniform split",
    "random": "random routing",
    "random_shares": "random, with the router's shares",
    "shuffled_within_model": "router's routes shuffled within each model",
    "routed_charged": "signature router, charged for F3 scoring",
}
FAMILY_MARKERS = {"gpt": "o", "llama": "s"}


def feature_name(name: str) -> str:
    """How figures name a feature: its display name in the feature table
    (``fixable.features``), so a feature registered there is named here too."""
    from fixable.features import display_name

    return display_name(name)


REGIME_ORDER = ("resamplable", "steerable-hard", "steerable-weak", "structural")
METHOD_ORDER = ("sft", "rl", "distill", "rft", "sftb")
STRATEGY_ORDER = (
    "routed",
    "routed_charged",
    "shuffled_within_model",
    "random_shares",
    "best_fixed",
    "retry",
    "uniform",
    "random",
    "oracle",
)
_FALLBACK = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#333333")

RC = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.edgecolor": "#444444",
    "axes.linewidth": 0.8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.grid.axis": "y",
    "axes.axisbelow": True,
    "grid.color": "#E6E6E6",
    "grid.linewidth": 0.8,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.labelsize": 9.5,
    "axes.labelcolor": "#333333",
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "xtick.color": "#444444",
    "ytick.color": "#444444",
    "legend.fontsize": 8.5,
    "legend.frameon": False,
    "font.family": "DejaVu Sans",
    "font.size": 9.5,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "pdf.fonttype": 42,  # embed TrueType, so PDF text stays text
    "svg.fonttype": "none",
    "image.cmap": "viridis",
}


def color_of(kind: str, name: str, index: int = 0) -> str:
    """The colour of a regime, method or strategy; unknown names get a stable fallback."""
    table = {"regime": REGIME_COLORS, "method": METHOD_COLORS, "strategy": STRATEGY_COLORS}[kind]
    if name in table:
        return table[name]
    return _FALLBACK[index % len(_FALLBACK)]


def ordered(names, order) -> list:
    """``names`` with the ones in ``order`` first, in that order, then the rest sorted."""
    names = list(dict.fromkeys(names))
    known = [n for n in order if n in names]
    return known + sorted(n for n in names if n not in order)


@contextlib.contextmanager
def report_style() -> Iterator[None]:
    """Matplotlib settings of every report figure. Figures are built as
    ``matplotlib.figure.Figure`` objects, never through pyplot, so no GUI backend or global
    figure state is involved."""
    import matplotlib

    with matplotlib.rc_context(RC):
        yield
