"""The report page: one self-contained HTML file (CSS inline, figures as base64 PNG, no
script, nothing fetched from anywhere) built from analysis.json, summary.json and the
rendered figures.

The page reads top to bottom as the paper's argument: a headline box with the key numbers
beside the paper's, then the figures (each with a one-sentence caption saying what to look
for), then tables with every number and its interval, then provenance.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from importlib import resources
from string import Template

from fixable.analysis.paper import PAPER
from fixable.report.style import (
    METHOD_COLORS,
    REGIME_COLORS,
    REGIME_ORDER,
    STRATEGY_NAMES,
    STRATEGY_ORDER,
    ordered,
)


@dataclass
class RenderedFigure:
    """A figure as the page shows it: its PNG bytes, or why there is none."""

    name: str
    title: str
    caption: str
    png: bytes | None = None
    width_px: int = 0
    height_px: int = 0
    files: tuple[str, ...] = ()  # paths relative to the report (PNG, PDF) for download
    unavailable: str | None = None


def esc(value) -> str:
    return html.escape(str(value), quote=True)


def _num(x) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def pct(x, digits: int = 1) -> str:
    x = _num(x)
    return "–" if x is None else f"{x * 100:.{digits}f} %"


def pts(x, digits: int = 1) -> str:
    x = _num(x)
    return "–" if x is None else f"{x * 100:+.{digits}f}"


def ci(low, high, fmt=pct) -> str:
    if _num(low) is None or _num(high) is None:
        return ""
    return f"[{fmt(low)}, {fmt(high)}]"


def fixed(x, digits: int = 3) -> str:
    x = _num(x)
    return "–" if x is None else f"{x:.{digits}f}"


def _get(d, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or d.get(key) is None:
            return default
        d = d[key]
    return d


# --------------------------------------------------------------------------- headline


def _card(
    label: str,
    big: str,
    lines: list[str],
    paper: str | None = None,
    key: bool = False,
    skip: str | None = None,
) -> str:
    parts = [f'<div class="card{" key" if key else ""}">', f'<div class="label">{esc(label)}</div>']
    if skip:
        parts.append(f'<div class="big">–</div><div class="skip">{esc(skip)}</div>')
    else:
        parts.append(f'<div class="big">{big}</div>')
        parts += [f'<div class="ci">{line}</div>' for line in lines if line]
    if paper:
        parts.append(f'<div class="paper">{paper}</div>')
    parts.append("</div>")
    return "".join(parts)


def headline_box(result: dict) -> str:
    paper = result.get("paper") or {}
    paper_topo = paper.get("topography_accuracy") or PAPER["topography_accuracy"]
    paper_lift = paper.get("routing_lift_steerable_hard", PAPER["routing_lift_steerable_hard"])
    skipped = result.get("skipped") or {}
    cards = []

    topo = result.get("topography")
    if topo:
        acc = topo["classifier"]["accuracy"]
        interval = topo["classifier"].get("interval") or {}
        maj = _get(topo, "majority", "accuracy", "mean")
        text = _get(topo, "text_baseline", "accuracy", "mean")
        rate = _get(topo, "failure_rate_only", "accuracy", "mean")
        centroid = _get(topo, "model_centroid", "accuracy", "mean")
        null = topo.get("null") or {}
        lines = [
            f"held-out models ({esc(_get(topo, 'protocol', 'cv', default=''))}) · 95 % CI "
            f"{ci(interval.get('low'), interval.get('high'))} · ± across {acc.get('n')} models",
            f"majority class {pct(maj)}"
            + (f" · text baseline {pct(text)}" if text is not None else "")
            + (f" · failure rate only {pct(rate)}" if rate is not None else "")
            + (f" · model centroid {pct(centroid)}" if centroid is not None else ""),
            f"null (methods permuted across models, {null.get('n_permutations', 0)}×): "
            f"{pct(null.get('mean'))}, 95th pct {pct(null.get('q95'))}, p = {fixed(null.get('p_value'), 2)}",
        ]
        cards.append(
            _card(
                "Topography accuracy",
                f"{pct(acc.get('mean'))} <small>± {pct(acc.get('std'))}</small>",
                lines,
                f"<b>paper:</b> {pct(paper_topo['mean'])} ± {pct(paper_topo['std'])} "
                f"(+{paper_topo.get('over_majority', 0.2) * 100:.0f} points over majority)",
                key=True,
            )
        )
    else:
        cards.append(
            _card(
                "Topography accuracy",
                "",
                [],
                f"<b>paper:</b> {pct(paper_topo['mean'])} ± {pct(paper_topo['std'])}",
                key=True,
                skip=skipped.get("topography", "not computed"),
            )
        )

    routing = result.get("routing")
    for subset, title in (
        ("all", "Routing lift, all failures"),
        ("steerable-hard", "Routing lift on steerable-hard"),
    ):
        block = _get(routing, "subsets", subset) or {}
        if routing and block.get("n"):
            lift = block["lift"]["best_fixed"]
            over = block.get("lift_over_best_fixed") or {}
            lines = [
                f"95 % CI {ci(lift['low'], lift['high'], pts)} points · n = {block['n']} failures "
                f"of {block.get('n_models', '?')} models (hierarchical bootstrap)",
                f"over the best fixed intervention{_best_fixed(routing)} at budget "
                f"{routing.get('budget_samples', 0):g} samples, scoring part",
                f"controls: routes shuffled within model {pts(_get(over, 'shuffled_within_model', 'value'))} · "
                f"random with the router's shares {pts(_get(over, 'random_shares', 'value'))} · "
                f"router charged for F3 {pts(_get(over, 'routed_charged', 'value'))}",
            ]
            flag = _get(routing, "calibration", "flag")
            if flag:
                lines.append(esc(flag))
            cards.append(
                _card(
                    title,
                    f"{pts(lift['value'])} <small>points</small>",
                    lines,
                    f"<b>paper:</b> +{paper_lift * 100:.1f} points"
                    if subset == "steerable-hard"
                    else "",
                    key=True,
                )
            )
        else:
            why = skipped.get("routing") or (f"no {subset} failures" if routing else "not computed")
            cards.append(
                _card(
                    title,
                    "",
                    [],
                    f"<b>paper:</b> +{paper_lift * 100:.1f} points"
                    if subset == "steerable-hard"
                    else "",
                    key=True,
                    skip=why,
                )
            )

    gap = _get(routing, "subsets", "all", "oracle_gap_closed")
    routed = _get(routing, "subsets", "all", "rates", "routed")
    if gap:
        cards.append(
            _card(
                "Oracle gap closed (all failures)",
                pct(gap.get("value"), 0),
                [
                    f"95 % CI {ci(gap.get('low'), gap.get('high'))}",
                    f"router rescues {pct(_get(routed, 'value'))} of all failures"
                    if routed
                    else "",
                ],
            )
        )

    labels = result.get("labels")
    if labels:
        spans, legend = [], []
        for regime in REGIME_ORDER:
            share = _num(_get(labels, "regimes", regime, "all", "value")) or 0.0
            if share > 0:
                spans.append(
                    f'<span style="width:{share * 100:.2f}%;background:{REGIME_COLORS[regime]}" '
                    f'title="{esc(regime)} {pct(share)}"></span>'
                )
            legend.append(
                f'<i style="background:{REGIME_COLORS[regime]}"></i>{esc(regime)} {pct(share, 0)}'
            )
        n = labels.get("n_failures")
        cards.append(
            '<div class="card"><div class="label">Failures analysed</div>'
            f'<div class="big">{esc(n)}</div>'
            f'<div class="ci">{len(_get(result, "data", "models", default={}))} models · '
            f"{esc(labels.get('n_certain', '–'))} with certain labels</div>"
            f'<div class="shares">{"".join(spans)}</div><div class="legend">{"".join(legend)}</div></div>'
        )

    gmm = _get(result, "regimes", "gmm")
    if gmm and _get(gmm, "agreement", "nmi") is not None:
        a, null = gmm["agreement"], gmm.get("null") or {}
        b = gmm.get("bootstrap_stability") or {}
        cards.append(
            _card(
                "Regimes (GMM) vs labels",
                f"NMI {fixed(a.get('nmi'), 2)}",
                [
                    f"permuted-feature null NMI {fixed(_get(null, 'nmi', 'mean'), 2)} "
                    f"(95th pct {fixed(_get(null, 'nmi', 'q95'), 2)})",
                    f"purity {fixed(a.get('purity'), 2)} vs majority label share "
                    f"{fixed(a.get('majority_share'), 2)}",
                    f"probe-split ARI {fixed(_get(gmm, 'probe_split_stability', 'ari'), 2)} vs null "
                    f"{fixed(_get(null, 'probe_split_ari', 'mean'), 2)} · bootstrap ARI "
                    f"{fixed(b.get('value'), 2)} (stability, not agreement) · k = {gmm.get('n_regimes')}",
                ],
            )
        )

    pairs = _get(result, "transfer", "pairs") or []
    cross = [
        p
        for p in pairs
        if not p.get("in_family") and _get(p, "classifier", "accuracy", "value") is not None
    ]
    inside = [
        p
        for p in pairs
        if p.get("in_family") and _get(p, "classifier", "accuracy", "value") is not None
    ]
    if cross:
        mean_cross = sum(p["classifier"]["accuracy"]["value"] for p in cross) / len(cross)
        lines = [
            f"{esc(p['source'])} → {esc(p['target'])}: {pct(p['classifier']['accuracy']['value'])} "
            f"{ci(p['classifier']['accuracy']['low'], p['classifier']['accuracy']['high'])}"
            for p in cross
        ]
        if inside:
            mean_in = sum(p["classifier"]["accuracy"]["value"] for p in inside) / len(inside)
            lines.append(f"in family: {pct(mean_in)}")
        cards.append(
            _card(
                "Topography across families",
                pct(mean_cross),
                lines,
                "<b>paper:</b> transfers across two cross-family probes",
            )
        )
    return f'<section class="headline" id="headline">{"".join(cards)}</section>'


def _best_fixed(routing: dict) -> str:
    """`` (checkpoint(c=first))``: the setting(s) the best-fixed baseline chose, if recorded."""
    chosen = list(dict.fromkeys(map(str, routing.get("best_fixed_choices") or [])))
    return f" ({esc(', '.join(chosen))})" if chosen else ""


# --------------------------------------------------------------------------- figures


def figure_block(fig: RenderedFigure) -> str:
    head = f'<h3 id="fig-{esc(fig.name)}">{esc(fig.title)}</h3>'
    if fig.unavailable or fig.png is None:
        return (
            head + f'<div class="unavailable">Not shown: {esc(fig.unavailable or "no data")}.</div>'
        )
    data = base64.b64encode(fig.png).decode("ascii")
    links = " · ".join(
        f'<a href="{esc(f)}">{esc(f.rsplit(".", 1)[-1].upper())}</a>' for f in fig.files
    )
    size = f' width="{fig.width_px}" height="{fig.height_px}"' if fig.width_px else ""
    return (
        f'{head}<figure><img class="figure" id="img-{esc(fig.name)}" alt="{esc(fig.title)}"{size} '
        f'src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(fig.caption)}"
        + (f'<span class="files">({links})</span>' if links else "")
        + "</figcaption></figure>"
    )


# --------------------------------------------------------------------------- tables


def table(
    headers: list[str],
    rows: list[list[str]],
    *,
    classes: list[str] | None = None,
    text_columns: tuple[int, ...] = (),
) -> str:
    """An HTML table; cells are already-escaped HTML strings."""
    th = "".join(
        f'<th class="text">{h}</th>' if i in text_columns else f"<th>{h}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{classes[r]}"' if classes and classes[r] else ""
        tds = "".join(
            f'<td class="text">{c}</td>' if i in text_columns else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr{cls}>{tds}</tr>")
    return f'<div class="scroll"><table><thead><tr>{th}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _dot(color: str) -> str:
    return f'<span class="dot" style="background:{color}"></span>'


def models_table(result: dict) -> str:
    models = _get(result, "data", "models") or {}
    per_model = _get(result, "labels", "per_model") or {}
    rows = []
    for name in sorted(models):
        info = models[name]
        shares = [pct(_get(per_model, name, "regimes", r, "all", "value"), 0) for r in REGIME_ORDER]
        method = info.get("method")
        rows.append(
            [
                esc(name),
                esc(info.get("family") or "–"),
                (_dot(METHOD_COLORS[method]) if method in METHOD_COLORS else "")
                + esc(method or "–"),
                esc(info.get("seed") if info.get("seed") is not None else "–"),
                esc(info.get("n_problems", "–")),
                esc(info.get("n_failed", "–")),
                pct(info.get("failure_rate")),
                *shares,
            ]
        )
    return table(
        [
            "model",
            "family",
            "method",
            "seed",
            "problems",
            "failed",
            "failure rate",
            *[f"{_dot(REGIME_COLORS[r])}{r}" for r in REGIME_ORDER],
        ],
        rows,
        text_columns=(0, 1, 2),
    )


def labels_table(result: dict) -> str:
    labels = result.get("labels")
    if not labels:
        return ""
    rows = []
    for regime in REGIME_ORDER:
        a = _get(labels, "regimes", regime, "all") or {}
        c = _get(labels, "regimes", regime, "certain_only") or {}
        rows.append(
            [
                _dot(REGIME_COLORS[regime]) + esc(regime),
                esc(a.get("count", "–")),
                pct(a.get("value")),
                ci(a.get("low"), a.get("high")),
                esc(c.get("count", "–")),
                pct(c.get("value")),
                ci(c.get("low"), c.get("high")),
            ]
        )
    t = labels.get("thresholds") or {}
    note = (
        f"Thresholds: resamplable when r<sub>retry</sub> ≥ {t.get('resample')}; steerable-hard when the best "
        f"bounded intervention reaches {t.get('steer_hard')}; steerable-weak from {t.get('steer_weak')}; "
        f"intervals {esc(t.get('interval', ''))} {esc(t.get('level', ''))}. {esc(labels.get('note', ''))}"
    )
    return (
        table(
            [
                "label",
                "count",
                "share",
                "95 % CI",
                "count (certain only)",
                "share (certain only)",
                "95 % CI",
            ],
            rows,
        )
        + f'<p class="legend">{note}</p>'
    )


def routing_table(result: dict) -> str:
    routing = result.get("routing")
    if not routing:
        return ""
    rows, classes = [], []
    for subset, block in routing.get("subsets", {}).items():
        if not block.get("n"):
            continue
        for strategy in ordered(block.get("rates", {}), STRATEGY_ORDER):
            rate = block["rates"][strategy]
            lift = block.get("lift", {}).get(strategy) if strategy != "routed" else None
            rows.append(
                [
                    esc(subset),
                    esc(STRATEGY_NAMES.get(strategy, strategy)),
                    esc(rate.get("n", block["n"])),
                    pct(rate.get("value")),
                    ci(rate.get("low"), rate.get("high")),
                    pts(lift["value"]) if lift else "",
                    ci(lift["low"], lift["high"], pts) if lift else "",
                ]
            )
            classes.append("em" if strategy == "routed" else "")
        gap = block.get("oracle_gap_closed")
        if gap:
            rows.append(
                [
                    esc(subset),
                    "share of the oracle gap closed",
                    esc(gap.get("n", "")),
                    pct(gap.get("value")),
                    ci(gap.get("low"), gap.get("high")),
                    "",
                    "",
                ]
            )
            classes.append("")
    shares = routing.get("routed_share") or {}
    share_line = ", ".join(
        f"{esc(s)} {pct(v, 0)}" for s, v in sorted(shares.items(), key=lambda kv: -kv[1])
    )
    thresholds = routing.get("thresholds") or {}
    threshold_line = "; ".join(
        f"{esc(group)}: " + ", ".join(f"{esc(f)} {fixed(v)}" for f, v in values.items() if v == v)
        for group, values in thresholds.items()
    )
    calibration = routing.get("calibration") or {}
    if threshold_line:
        threshold_line = (
            f" Thresholds frozen on calibration models ({esc(calibration.get('scheme', ''))}; "
            f"each group routed with the medians of the other groups' failures): {threshold_line}."
        )
    if calibration.get("flag"):
        threshold_line += f" <b>{esc(calibration['flag'])}</b>"
    charge = routing.get("router_charge") or {}
    if charge:
        threshold_line += (
            f" F3 scoring costs the router {fixed(charge.get('mean_samples'), 1)} "
            "retry-equivalent samples per failure on average (charged in the "
            "'charged' row, as in deployment)."
        )
    return (
        table(
            [
                "failures",
                "strategy",
                "n",
                "rescued",
                "95 % CI",
                "router − strategy (points)",
                "95 % CI",
            ],
            rows,
            classes=classes,
            text_columns=(0, 1),
        )
        + f'<p class="legend">Scored on the scoring part (odd sample indices); subsets from the labelling part. Budget: {routing.get("budget_samples", 0):g} {esc(routing.get("budget_unit", ""))}. '
        f"The router sent failures to: {share_line or '–'}. Router: <code>{esc(routing.get('router', ''))}</code>.{threshold_line}</p>"
    )


def topography_table(result: dict) -> str:
    topo = result.get("topography")
    if not topo:
        return ""
    rows, classes = [], []

    def add(name, res, em=False):
        acc, interval = res.get("accuracy", {}), res.get("interval", {})
        rows.append(
            [
                esc(name),
                pct(acc.get("mean")),
                pct(acc.get("std")),
                ci(interval.get("low"), interval.get("high")),
                esc(interval.get("n", res.get("n", ""))),
            ]
        )
        classes.append("em" if em else "")

    add("features (F1–F3)", topo["classifier"], em=True)
    add("majority class (share)", topo.get("majority", {}))
    if topo.get("majority_in_folds"):
        add("training folds' majority", topo["majority_in_folds"])
    if topo.get("failure_rate_only"):
        add("failure rate only (one number per model)", topo["failure_rate_only"])

    def nested(section: dict, prefix: str) -> None:
        if section.get("features_plus_failure_rate"):
            add(f"{prefix}features + failure rate (nested)", section["features_plus_failure_rate"])
        beyond = section.get("beyond_failure_rate")
        if beyond:
            gain = beyond["gain"]
            rows.append(
                [
                    esc(
                        f"{prefix}gain of features + failure rate over failure rate only "
                        f"(points; {beyond['verdict']})"
                    ),
                    fixed(None if gain["value"] is None else gain["value"] * 100, 1),
                    "",
                    f"[{fixed(gain['low'] * 100, 1)}, {fixed(gain['high'] * 100, 1)}]",
                    esc(gain.get("n", "")),
                ]
            )
            classes.append("")

    nested(topo, "")
    if topo.get("model_centroid"):
        add("per-model feature centroid", topo["model_centroid"])
    if topo.get("text_baseline"):
        add("text baseline (TF-IDF over the failed rollouts)", topo["text_baseline"])

    def null_row(label, null):
        rows.append(
            [
                esc(
                    f"{label} ({null.get('n_permutations')}×; p = {fixed(null.get('p_value'), 2)})"
                ),
                pct(null.get("mean")),
                pct(null.get("std")),
                f"95th pct {pct(null.get('q95'))}",
                "",
            ]
        )
        classes.append("")

    for matched in topo.get("matched") or ():
        if matched.get("skipped"):
            continue
        prefix = f"accuracy-matched ({', '.join(matched['methods'])}): "
        add(f"{prefix}features (F1–F3)", matched["classifier"], em=True)
        add(f"{prefix}majority class (share)", matched["majority"])
        if matched.get("failure_rate_only"):
            add(f"{prefix}failure rate only", matched["failure_rate_only"])
        nested(matched, prefix)
        null_row(f"{prefix}null: methods permuted", matched.get("null") or {})
    null = topo.get("null") or {}
    if null:
        null_row("null: methods permuted across models", null)
    seed = topo.get("seed_as_label")
    if seed:
        add(
            f"seed-as-label null: training seed, leave-one-method-out (chance {pct(seed.get('chance'))})",
            seed,
        )
    for name, res in (topo.get("ablations") or {}).items():
        if name != "features":
            add(f"ablation: {name}", res)
    paper = (result.get("paper") or {}).get("topography_accuracy") or {}
    rows.append(["paper (its models)", pct(paper.get("mean")), pct(paper.get("std")), "", ""])
    classes.append("paper")
    protocol = topo.get("protocol") or {}
    return (
        table(
            ["predictor", "accuracy (mean over held-out models)", "± std", "95 % CI", "n"],
            rows,
            classes=classes,
        )
        + f'<p class="legend">{esc(protocol.get("cv", ""))}; interval: {esc(protocol.get("interval", ""))}.</p>'
    )


def regimes_table(result: dict) -> str:
    regimes = result.get("regimes") or {}
    rows = []
    for method in ("gmm", "kmeans"):
        r = regimes.get(method)
        if not isinstance(r, dict):
            continue
        b = r.get("bootstrap_stability") or {}
        rows.append(
            [
                esc({"gmm": "GMM", "kmeans": "k-means"}[method]),
                esc(r.get("n_regimes")),
                esc(_get(r, "selection", "criterion", default="")),
                fixed(b.get("value"), 2),
                ci(b.get("low"), b.get("high"), lambda v: fixed(v, 2)),
                fixed(_get(r, "probe_split_stability", "ari"), 2),
                fixed(_get(r, "agreement", "nmi"), 2),
                fixed(_get(r, "agreement", "ari"), 2),
                fixed(_get(r, "agreement", "purity"), 2),
                fixed(_get(r, "agreement", "majority_share"), 2),
                fixed(_get(r, "null", "nmi", "mean"), 2),
                fixed(_get(r, "null", "purity", "mean"), 2),
                fixed(_get(r, "null", "probe_split_ari", "mean"), 2),
            ]
        )
    if not rows:
        return ""
    return table(
        [
            "clusterer",
            "k",
            "k chosen by",
            "bootstrap ARI",
            "range",
            "probe-split ARI",
            "NMI",
            "ARI",
            "purity",
            "majority share",
            "null NMI",
            "null purity",
            "null probe-split ARI",
        ],
        rows,
        text_columns=(2,),
    ) + (
        '<p class="legend">Agreement with the labels of the labelling part; nulls: every '
        "feature permuted independently across failures and the clusterer refitted.</p>"
    )


def transfer_table(result: dict) -> str:
    pairs = _get(result, "transfer", "pairs") or []
    if not pairs:
        return ""
    rows = []
    for p in pairs:
        acc = _get(p, "classifier", "accuracy") or {}
        bf = _get(p, "best_fixed", "rescue") or {}
        rt = _get(p, "router_thresholds", "rescue") or {}
        setting = _get(p, "best_fixed", "setting")
        # in family, best fixed is cross-fitted: one choice per half of the problems
        settings = list(dict.fromkeys(setting)) if isinstance(setting, list) else [setting or "–"]
        where = "in family" if p.get("in_family") else "across"
        rows.append(
            [
                f"{esc(p['source'])} → {esc(p['target'])} <small>({where})</small>",
                esc(p.get("n_target", "")),
                f"{pct(acc.get('value'))} {ci(acc.get('low'), acc.get('high'))}",
                pct(_get(p, "classifier", "majority_share")),
                fixed(_get(p, "clusters", "nmi"), 2),
                esc(", ".join(map(str, settings))),
                f"{pct(bf.get('value'))} {ci(bf.get('low'), bf.get('high'))}",
                f"{pct(rt.get('value'))} {ci(rt.get('low'), rt.get('high'))}",
            ]
        )
    return table(
        [
            "fitted → evaluated",
            "n",
            "method accuracy (95 % CI)",
            "majority",
            "cluster NMI",
            "best fixed, chosen on the source",
            "its rescue (95 % CI)",
            "router rescue (95 % CI)",
        ],
        rows,
        text_columns=(0, 5),
    )


def features_table(result: dict) -> str:
    summary = _get(result, "features", "summary") or {}
    rows = []
    for name, block in summary.items():
        a = block.get("all") or {}
        rows.append(
            [
                esc(name),
                fixed(a.get("mean")),
                fixed(a.get("median")),
                fixed(a.get("std")),
                esc(a.get("n", "")),
            ]
        )
    unavailable = _get(result, "features", "unavailable") or {}
    extra = "".join(
        f"<li><b>{esc(k)}</b> unavailable: {esc(v)}</li>" for k, v in unavailable.items()
    )
    used = ", ".join(_get(result, "features", "used", default=[]))
    return (
        table(["feature", "mean", "median", "std", "n"], rows)
        + f'<p class="legend">Features used by clustering, routing and topography: {esc(used)}; the rest are '
        "ablation variants, reported beside them and never substituted.</p>"
        + (f'<ul class="notes">{extra}</ul>' if extra else "")
    )


def provenance(result: dict, manifest: dict | None) -> str:
    items = []
    for source in result.get("sources") or []:
        items.append(
            f"<li>run <code>{esc(source.get('path', source.get('run')))}</code>: "
            f"{esc(source.get('rollouts'))} rollouts, run seed {esc(source.get('run_seed'))}, "
            f"schema version {esc(source.get('schema_version'))}</li>"
        )
    if manifest:
        invocations = manifest.get("invocations") or []
        last = invocations[-1] if invocations else {}
        env = last.get("environment") or {}
        git = env.get("git") or {}
        revision = git.get("revision") or git.get("commit") or git.get("sha") or ""
        dirty = " (uncommitted changes)" if git.get("dirty") else ""
        items.append(
            f"<li>sampled in {len(invocations)} invocation(s); last: <code>{esc(_argv(last.get('argv')))}</code>"
            f"{' at ' + esc(last.get('started')) if last.get('started') else ''}</li>"
        )
        if revision:
            items.append(f"<li>git revision <code>{esc(revision)}</code>{dirty}</li>")
        packages = env.get("packages") or {}
        if packages:
            items.append(
                "<li>packages: "
                + ", ".join(f"{esc(k)} {esc(v)}" for k, v in sorted(packages.items()))
                + "</li>"
            )
        demo = manifest.get("demo")
        if isinstance(demo, dict) and demo.get("command"):
            items.append(f"<li>reproduce: <code>{esc(demo['command'])}</code></li>")
    config = result.get("config") or {}
    items.append(f"<li>analysis configuration: <code>{esc(_compact(config))}</code></li>")
    items.append(
        f"<li>analysis written {esc(result.get('created', ''))} by fixable {esc(result.get('fixable_version', ''))}</li>"
    )
    skipped = result.get("skipped") or {}
    notes = list(result.get("notes") or [])
    for stage, why in skipped.items():
        notes.append(f"{stage} skipped: {why}")
    return f'<ul class="notes">{"".join(items)}</ul>' + (
        f'<h3>Notes</h3><ul class="notes">{"".join(f"<li>{esc(n)}</li>" for n in notes)}</ul>'
        if notes
        else ""
    )


def _argv(argv) -> str:
    """A recorded command line, its program by name rather than by install path."""
    words = [str(w) for w in (argv or [])]
    if words:
        words[0] = words[0].rsplit("/", 1)[-1]
    return " ".join(words)


def _compact(config: dict) -> str:
    parts = []
    for key, value in config.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k}={v}" for k, v in value.items()) + "}"
        parts.append(f"{key}={value}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- page


def render_page(
    result: dict,
    figures: list[RenderedFigure],
    *,
    run_label: str,
    manifest: dict | None = None,
    control: dict | None = None,
    control_source: str | None = None,
) -> str:
    """The page; ``control`` is a known-truth analysis (the planted testbed) shown in its
    own positive-control section (the run's own analysis is shown there when it has one)."""
    from fixable import __version__
    from fixable.analysis.result import read_analysis
    from fixable.report.control import SECTION_ID, control_section

    result = read_analysis(result)
    data = result.get("data") or {}
    models = data.get("models") or {}
    families = sorted({m.get("family") for m in models.values() if m.get("family")})
    methods = sorted({m.get("method") for m in models.values() if m.get("method")})
    k, r = _get(data, "K", "min"), _get(data, "R", "min")
    subtitle = (
        f"{len(models)} model(s)"
        + (f" · families {', '.join(families)}" if families else "")
        + (f" · methods {', '.join(methods)}" if methods else "")
        + f" · {data.get('n_failures', '–')} failures from {data.get('n_rollouts', '–')} rollouts"
        + (f" · K = {k}" if k else "")
        + (f" · R = {r}" if r else "")
        + (
            f" ({_get(data, 'R_label', 'min')} labelling + {_get(data, 'R_score', 'min')} scoring, "
            "protocol v2)"
            if _get(data, "R_score", "min")
            else ""
        )
    )
    toc = " ".join(f'<a href="#fig-{esc(f.name)}">{esc(f.title)}</a>' for f in figures)
    positive_control = control_section(result) + (
        control_section(control, source=control_source) if control else ""
    )
    if positive_control:
        toc += f' <a href="#{SECTION_ID}">Positive control</a>'
    body = [
        '<header class="top">',
        f'<h1><span class="tool">fixable</span> report · {esc(run_label)}</h1>',
        f"<p>{esc(subtitle)}</p>",
        "<p>Which failures more samples fix, which a bounded intervention fixes, and which nothing fixes — "
        "read from the distribution of the failed rollouts. The paper's figures are measured on its models; "
        "ours on the models of this run.</p>",
        f'<nav class="toc">{toc} <a href="#tables">Tables</a> <a href="#provenance">Provenance</a></nav>',
        "</header>",
        headline_box(result),
        '<h2 id="figures">Figures</h2>',
        *[figure_block(f) for f in figures],
        '<h2 id="tables">Tables</h2>',
        "<h3>Models</h3>",
        models_table(result),
    ]
    for title, block in (
        ("Regime labels (from the rescue sweep)", labels_table(result)),
        ("Routing at a matched budget", routing_table(result)),
        ("Topography", topography_table(result)),
        ("Regimes found without labels", regimes_table(result)),
        ("Transfer across families", transfer_table(result)),
        ("Features", features_table(result)),
    ):
        if block:
            body += [f"<h3>{esc(title)}</h3>", block]
    if positive_control:
        body.append(positive_control)
    body += [
        '<h2 id="provenance">Provenance</h2>',
        provenance(result, manifest),
        f"<footer>Written by fixable {esc(__version__)}. Self-contained: this page loads nothing from the "
        "network; every number has its interval in summary.json beside it.</footer>",
    ]
    template = Template(resources.files("fixable.report").joinpath("template.html").read_text())
    css = resources.files("fixable.report").joinpath("report.css").read_text()
    return template.substitute(
        title=esc(f"fixable report · {run_label}"),
        css=css,
        body="\n".join(body),
        version=esc(__version__),
    )
