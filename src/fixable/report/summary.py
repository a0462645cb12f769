"""``summary.json``: the headline numbers of a run beside the paper's, and every figure of
the analysis with its interval, in one flat, stable document.

``headline`` holds the few numbers the report's headline box shows (topography accuracy,
routing lift on steerable-hard, oracle gap closed, cluster stability, transfer, regime
shares), each ``{id, name, value, low, high, n, interval, paper}``. ``estimates`` holds
every estimate of ``analysis.json`` — any object with ``value``/``low``/``high`` (an interval)
or ``mean``/``std`` (over seeds) — keyed by its dotted path in analysis.json, so nothing the
analysis measured is left out and each one can be traced back. ``curves`` keeps the
rescue@budget curves (value and band per budget).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator

from fixable.analysis.paper import PAPER

FORMAT, FORMAT_VERSION = "fixable-summary", 1


def iter_estimates(node, path: str = "") -> Iterator[tuple[str, dict]]:
    """Every estimate in ``node`` with its dotted path: objects holding ``value``/``low``/
    ``high`` or ``mean``/``std``. Lists of numbers (curves) are left to ``curves``."""
    if isinstance(node, dict):
        is_interval = "value" in node and "low" in node and "high" in node
        is_spread = "mean" in node and "std" in node
        if (is_interval or is_spread) and not isinstance(node.get("value", node.get("mean")), list):
            yield path, node
        for key, value in node.items():
            if key == "curves" and path.endswith("routing"):
                continue
            yield from iter_estimates(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):  # e.g. transfer.pairs; lists of numbers yield nothing
        for i, value in enumerate(node):
            yield from iter_estimates(value, f"{path}.{i}")


def _estimate(node: dict) -> dict:
    keep = ("value", "low", "high", "n", "interval", "mean", "std", "count")
    return {k: node[k] for k in keep if k in node}


def headline(result: dict) -> list[dict]:
    """The headline numbers, ours beside the paper's; absent stages are listed with why."""
    paper = result.get("paper") or {}
    paper_topo = paper.get("topography_accuracy") or PAPER["topography_accuracy"]
    paper_lift = paper.get("routing_lift_steerable_hard", PAPER["routing_lift_steerable_hard"])
    skipped = result.get("skipped") or {}
    rows: list[dict] = []

    topo = result.get("topography")
    if topo:
        acc = topo["classifier"]["accuracy"]
        interval = topo["classifier"].get("interval") or {}
        majority = topo.get("majority", {}).get("accuracy", {}).get("mean")
        text = (topo.get("text_baseline") or {}).get("accuracy", {}).get("mean")
        rows.append(
            {
                "id": "topography_accuracy",
                "name": "Topography accuracy (post-training method from a failure's features)",
                "value": acc.get("mean"),
                "std": acc.get("std"),
                "low": interval.get("low"),
                "high": interval.get("high"),
                "n": interval.get("n", topo.get("n_failures")),
                "interval": interval.get("interval", "") + "; ± is the std over CV seeds",
                "baselines": {"majority_class": majority, "text_baseline": text},
                "over_majority": None
                if majority is None or acc.get("mean") is None
                else acc["mean"] - majority,
                "paper": paper_topo,
                "unit": "share",
            }
        )
    else:
        rows.append(
            {
                "id": "topography_accuracy",
                "name": "Topography accuracy",
                "value": None,
                "skipped": skipped.get("topography", "not computed"),
                "paper": paper_topo,
            }
        )

    routing = result.get("routing")
    sh = (routing or {}).get("subsets", {}).get("steerable-hard", {})
    if routing and sh.get("n"):
        for baseline in ("best_fixed", "retry"):
            lift = sh["lift"].get(baseline)
            if not lift:
                continue
            rows.append(
                {
                    "id": f"routing_lift_steerable_hard_vs_{baseline}",
                    "name": f"Routing lift on steerable-hard over {baseline.replace('_', ' ')} "
                    f"(budget {routing.get('budget_samples'):g} samples)",
                    **_estimate(lift),
                    "paper": paper_lift if baseline == "best_fixed" else None,
                    "unit": "share (points / 100)",
                }
            )
    else:
        why = skipped.get("routing") or (
            "no steerable-hard failures" if routing else "not computed"
        )
        rows.append(
            {
                "id": "routing_lift_steerable_hard_vs_best_fixed",
                "name": "Routing lift on steerable-hard",
                "value": None,
                "skipped": why,
                "paper": paper_lift,
            }
        )
    if routing:
        gap = routing.get("subsets", {}).get("all", {}).get("oracle_gap_closed")
        if gap:
            rows.append(
                {
                    "id": "oracle_gap_closed_all",
                    "name": "Share of the oracle gap the router closes (all failures)",
                    **_estimate(gap),
                    "paper": None,
                    "unit": "share",
                }
            )
        rate = routing.get("subsets", {}).get("all", {}).get("rates", {}).get("routed")
        if rate:
            rows.append(
                {
                    "id": "routed_rescue_all",
                    "name": "Failures rescued by the router (all failures)",
                    **_estimate(rate),
                    "paper": None,
                    "unit": "share",
                }
            )

    labels = result.get("labels")
    if labels:
        for regime in ("resamplable", "steerable-hard", "steerable-weak", "structural"):
            block = labels["regimes"].get(regime, {}).get("all")
            if block:
                rows.append(
                    {
                        "id": f"share_{regime}",
                        "name": f"Share of failures labelled {regime}",
                        **_estimate(block),
                        "paper": None,
                        "unit": "share",
                    }
                )

    gmm = (result.get("regimes") or {}).get("gmm")
    if gmm and gmm.get("bootstrap_stability"):
        rows.append(
            {
                "id": "cluster_stability_gmm",
                "name": f"GMM regime stability (bootstrap ARI, k={gmm.get('n_regimes')})",
                **_estimate(gmm["bootstrap_stability"]),
                "paper": None,
                "unit": "ARI",
            }
        )

    pairs = (result.get("transfer") or {}).get("pairs") or []
    for p in pairs:
        if p.get("in_family"):
            continue
        acc = (p.get("classifier") or {}).get("accuracy")
        if acc:
            rows.append(
                {
                    "id": f"transfer_topography_{p['source']}_to_{p['target']}",
                    "name": f"Topography accuracy, fitted on {p['source']}, tested on {p['target']}",
                    **_estimate(acc),
                    "paper": None,
                    "unit": "share",
                }
            )
    return rows


def build_summary(
    result: dict, *, run: str, report_files: dict | None = None, unavailable: dict | None = None
) -> dict:
    """The summary document of a run's analysis ``result`` (analysis.json's content)."""
    data = result.get("data") or {}
    routing = result.get("routing") or {}
    estimates = {path: _estimate(node) for path, node in iter_estimates(result)}
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": run,
        "analysis": {
            k: result.get(k) for k in ("format", "format_version", "created", "fixable_version")
        },
        "data": {
            "n_rollouts": data.get("n_rollouts"),
            "n_failures": data.get("n_failures"),
            "models": {
                m: {
                    k: v
                    for k, v in info.items()
                    if k in ("family", "method", "seed", "n_problems", "n_failed", "failure_rate")
                }
                for m, info in (data.get("models") or {}).items()
            },
            "K": data.get("K"),
            "R": data.get("R"),
            "settings": data.get("settings"),
        },
        "paper": result.get("paper") or PAPER,
        "headline": headline(result),
        "estimates": estimates,
        "curves": routing.get("curves"),
        "skipped": result.get("skipped") or {},
        "notes": result.get("notes") or [],
        "figures": report_files or {},
        "figures_unavailable": unavailable or {},
    }
