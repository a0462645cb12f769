"""The reference figures of arXiv 2606.05145, measured on the paper's models (not ours).

Every table, report and closing line that shows them beside our numbers reads them from
here; fractions, not percent.
"""

from __future__ import annotations

PAPER = {
    "topography_accuracy": {"mean": 0.843, "std": 0.043, "over_majority": 0.20},
    "routing_lift_steerable_hard": 0.122,
    "note": "reference figures of the paper, measured on its models; the paper's routing lift is "
    "compared here with our lift over each baseline",
}


def topography_text(paper: dict | None = None) -> str:
    """``84.3 ± 4.3 %`` (from ``paper``, an analysis' ``"paper"`` entry, or ``PAPER``)."""
    topo = (paper or PAPER).get("topography_accuracy") or PAPER["topography_accuracy"]
    return f"{topo['mean'] * 100:.1f} ± {topo['std'] * 100:.1f} %"
