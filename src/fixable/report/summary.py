"""``summary.json``: the headline numbers of a run beside the paper's, and every figure of
the analysis with its interval, in one flat, stable document.

``headline`` holds the few numbers the report's headline box shows (protocol v2: topography
on held-out models, routing lift over best fixed on all failures and on steerable-hard,
routed rescue, oracle gap closed, regime agreement and probe-split stability, transfer,
regime shares), each ``{id, name, value, low, high, n, interval, controls, paper}``:
``controls`` holds the control or null each figure stands beside (SPEC §3: no headline
without one). "Lift vs retry on steerable-hard" is not a headline: retry is near 0 there
by the subset's definition. ``estimates`` holds
every estimate of ``analysis.json`` — any object with ``value``/``low``/``high`` (an interval)
or ``mean``/``std`` (over seeds) — keyed by its dotted path in analysis.json, so nothing the
analysis measured is left out and each one can be traced back. ``curves`` keeps the
rescue@budget curves (value and band per budget).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterator

from fixable.analysis.paper import PAPER
from fixable.analysis.result import read_analysis

FORMAT, FORMAT_VERSION = "fixable-summary", 2


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


def _mean(block) -> float | None:
    return ((block or {}).get("accuracy") or {}).get("mean")


def _gain(beyond) -> dict | None:
    """The nested comparison's gain (value, low, high) or None."""
    if not beyond:
        return None
    gain = beyond["gain"]
    return {k: gain.get(k) for k in ("value", "low", "high")} | {"verdict": beyond.get("verdict")}


def _matched_controls(matched) -> dict | None:
    """The accuracy-matched view's figures (None when absent, its reason when skipped)."""
    if not matched:
        return None
    if matched.get("skipped"):
        return {"methods": matched.get("methods"), "skipped": matched["skipped"]}
    return {
        "methods": matched["methods"],
        "features": _mean(matched.get("classifier")),
        "majority_class": _mean(matched.get("majority")),
        "failure_rate_only": _mean(matched.get("failure_rate_only")),
        "features_plus_failure_rate": _mean(matched.get("features_plus_failure_rate")),
        "gain_over_failure_rate_only": _gain(matched.get("beyond_failure_rate")),
        "null_methods_permuted_mean": (matched.get("null") or {}).get("mean"),
        "null_p_value": (matched.get("null") or {}).get("p_value"),
    }


def headline(result: dict) -> list[dict]:
    """The headline numbers, each beside its controls and the paper's; absent stages are
    listed with why."""
    analysis = read_analysis(result)
    paper = analysis.get("paper") or {}
    paper_topo = paper.get("topography_accuracy") or PAPER["topography_accuracy"]
    paper_lift = paper.get("routing_lift_steerable_hard", PAPER["routing_lift_steerable_hard"])
    skipped = analysis.get("skipped") or {}
    rows: list[dict] = []

    topo = analysis.get("topography")
    if topo:
        acc = topo["classifier"]["accuracy"]
        interval = topo["classifier"].get("interval") or {}
        null = topo.get("null") or {}
        majority = _mean(topo.get("majority"))
        rows.append(
            {
                "id": "topography_accuracy",
                "name": "Topography accuracy on held-out models (post-training method from a "
                "failure's features)",
                "value": acc.get("mean"),
                "std": acc.get("std"),
                "low": interval.get("low"),
                "high": interval.get("high"),
                "n": acc.get("n"),
                "interval": (topo.get("protocol") or {}).get("cv", "")
                + "; ± is the std across held-out models; "
                + interval.get("interval", ""),
                "controls": {
                    "majority_class": majority,
                    "training_fold_majority": _mean(topo.get("majority_in_folds")),
                    "failure_rate_only": _mean(topo.get("failure_rate_only")),
                    "model_centroid": _mean(topo.get("model_centroid")),
                    "text_baseline": _mean(topo.get("text_baseline")),
                    "null_methods_permuted_mean": null.get("mean"),
                    "null_methods_permuted_q95": null.get("q95"),
                    "null_p_value": null.get("p_value"),
                    "features_plus_failure_rate": _mean(topo.get("features_plus_failure_rate")),
                    "gain_over_failure_rate_only": _gain(topo.get("beyond_failure_rate")),
                    "matched": [_matched_controls(m) for m in topo.get("matched") or ()],
                    "seed_as_label": _mean(topo.get("seed_as_label")),
                    "seed_as_label_chance": (topo.get("seed_as_label") or {}).get("chance"),
                    "seed_as_label_at_chance": (topo.get("seed_as_label") or {}).get("at_chance"),
                },
                "baselines": {
                    "majority_class": majority,
                    "text_baseline": _mean(topo.get("text_baseline")),
                },
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

    routing = analysis.get("routing")
    budget = (routing or {}).get("budget_samples")
    for subset, row_id in (
        ("all", "routing_lift_all_vs_best_fixed"),
        ("steerable-hard", "routing_lift_steerable_hard_vs_best_fixed"),
    ):
        block = (routing or {}).get("subsets", {}).get(subset, {})
        if not (routing and block.get("n")):
            why = skipped.get("routing") or (f"no {subset} failures" if routing else "not computed")
            rows.append(
                {
                    "id": row_id,
                    "name": f"Routing lift over best fixed, {subset}",
                    "value": None,
                    "skipped": why,
                    "paper": paper_lift if subset == "steerable-hard" else None,
                }
            )
            continue
        over = block.get("lift_over_best_fixed") or {}
        rows.append(
            {
                "id": row_id,
                "name": f"Routing lift over best fixed on {subset} failures (scoring part, "
                f"budget {budget:g} samples, router frozen on calibration models)",
                **_estimate(block["lift"]["best_fixed"]),
                "controls": {
                    "shuffled_within_model": (over.get("shuffled_within_model") or {}).get("value"),
                    "random_with_router_shares": (over.get("random_shares") or {}).get("value"),
                    "router_charged_for_scoring": (over.get("routed_charged") or {}).get("value"),
                    "oracle": (over.get("oracle") or {}).get("value"),
                },
                "paper": paper_lift if subset == "steerable-hard" else None,
                "unit": "share (points / 100)",
            }
        )
    for key, prefix, what in (
        ("learned", "learned_router", "Learned router (k-NN, fitted leave-one-model-out)"),
        (
            "learned_free",
            "free_router",
            "Free router (the learned router on answer dispersion and trajectory uncertainty "
            "only, charged nothing)",
        ),
    ):
        learned = (routing or {}).get(key) or {}
        for subset, row_id in (
            ("all", f"{prefix}_lift_all_vs_best_fixed"),
            ("steerable-hard", f"{prefix}_lift_steerable_hard_vs_best_fixed"),
        ):
            block = learned.get("subsets", {}).get(subset, {})
            if not block.get("n"):
                continue
            over = block.get("lift_over_best_fixed") or {}
            rows.append(
                {
                    "id": row_id,
                    "name": f"{what} lift over best "
                    f"fixed on {subset} failures (scoring part, budget {budget:g} samples)",
                    **_estimate(over["routed"]),
                    "controls": {
                        "shuffled_within_model": (over.get("shuffled_within_model") or {}).get(
                            "value"
                        ),
                        "router_charged_for_scoring": (over.get("routed_charged") or {}).get(
                            "value"
                        ),
                        "interval_with_router_refitted": _interval(
                            (learned.get("refitted_lift_over_best_fixed") or {}).get(subset)
                        ),
                    },
                    "unit": "share (points / 100)",
                }
            )
    if routing:
        all_ = routing.get("subsets", {}).get("all", {})
        rate = all_.get("rates", {}).get("routed")
        if rate:
            rates = all_["rates"]
            rows.append(
                {
                    "id": "routed_rescue_all",
                    "name": "Failures rescued by the router (all failures, scoring part)",
                    **_estimate(rate),
                    "controls": {
                        s: (rates.get(s) or {}).get("value")
                        for s in (
                            "best_fixed",
                            "retry",
                            "shuffled_within_model",
                            "random_shares",
                            "routed_charged",
                            "oracle",
                        )
                    },
                    "paper": None,
                    "unit": "share",
                }
            )
        gap = all_.get("oracle_gap_closed")
        if gap:
            rows.append(
                {
                    "id": "oracle_gap_closed_all",
                    "name": "Share of the oracle gap the router closes (all failures)",
                    **_estimate(gap),
                    "controls": {},
                    "paper": None,
                    "unit": "share",
                }
            )

    gmm = (analysis.get("regimes") or {}).get("gmm")
    if gmm and (gmm.get("agreement") or {}).get("nmi") is not None:
        a, null = gmm["agreement"], gmm.get("null") or {}
        rows.append(
            {
                "id": "regime_nmi_gmm",
                "name": f"GMM regimes' agreement with the labels (NMI, k={gmm.get('n_regimes')})",
                "value": a["nmi"],
                "n": a.get("n"),
                "controls": {
                    "null_permuted_features_mean": (null.get("nmi") or {}).get("mean"),
                    "null_permuted_features_q95": (null.get("nmi") or {}).get("q95"),
                    "null_p_value": (null.get("nmi") or {}).get("p_value"),
                },
                "paper": None,
                "unit": "NMI",
            }
        )
        rows.append(
            {
                "id": "regime_purity_gmm",
                "name": "GMM regimes' purity with respect to the labels",
                "value": a["purity"],
                "n": a.get("n"),
                "controls": {
                    "majority_label_share": a.get("majority_share"),
                    "null_permuted_features_mean": (null.get("purity") or {}).get("mean"),
                },
                "paper": None,
                "unit": "share",
            }
        )
        split = (gmm.get("probe_split_stability") or {}).get("ari")
        if split is not None:
            rows.append(
                {
                    "id": "regime_probe_split_ari_gmm",
                    "name": "GMM regimes' stability across probe halves (ARI)",
                    "value": split,
                    "controls": {
                        "null_permuted_features_mean": (null.get("probe_split_ari") or {}).get(
                            "mean"
                        ),
                        "null_permuted_features_q95": (null.get("probe_split_ari") or {}).get(
                            "q95"
                        ),
                        "bootstrap_ari": (gmm.get("bootstrap_stability") or {}).get("value"),
                    },
                    "paper": None,
                    "unit": "ARI",
                }
            )

    labels = analysis.get("labels")
    if labels:
        for regime in ("resamplable", "steerable-hard", "steerable-weak", "structural"):
            block = labels["regimes"].get(regime, {}).get("all")
            certain = labels["regimes"].get(regime, {}).get("certain_only") or {}
            if block:
                rows.append(
                    {
                        "id": f"share_{regime}",
                        "name": f"Share of failures labelled {regime} (labelling part)",
                        **_estimate(block),
                        "controls": {
                            "certain_count": certain.get("count"),
                            "n_certain": labels.get("n_certain"),
                        },
                        "paper": None,
                        "unit": "share",
                    }
                )

    pairs = (analysis.get("transfer") or {}).get("pairs") or []
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
                    "controls": {"majority_share": p["classifier"].get("majority_share")},
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
            "R_label": data.get("R_label"),
            "R_score": data.get("R_score"),
            "split": data.get("split"),
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


def _interval(estimate: dict | None) -> list[float] | None:
    """[low, high] of an estimate, or None."""
    if not estimate or estimate.get("low") is None:
        return None
    return [estimate["low"], estimate["high"]]
