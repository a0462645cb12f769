"""The report's positive-control section: an analysis with a known truth (the planted
testbed, docs/organism.md), shown apart from the run's own results and labelled as a
control.

``control_section(result)`` renders, from an analysis.json that has a ``recovery`` section
(``AnalysisConfig(truth=...)``): per model, the router's lift over best fixed on all
failures and on steerable-hard with protocol v2's intervals, beside the within-model
shuffled routes (the permuted-features null of a rule that routes each failure on its own
features) and the router's shares drawn at random; best fixed and oracle; then how the
regime labels, the unsupervised regimes, the router's choice and the best setting on the
labelling part line up with the planted truth (NMI beside the null of the truth permuted
within each model), with the confusion counts. It returns "" for an analysis without a
known truth, so the section is absent rather than empty.
"""

from __future__ import annotations

from fixable.report.html import _get, ci, esc, fixed, pct, pts, table

SECTION_ID = "positive-control"
TITLE = "Positive control: the planted testbed"
COLUMN_NAMES = {
    "label": "regime label (rescue outcomes)",
    "regime_gmm": "unsupervised regime (GMM)",
    "regime_kmeans": "unsupervised regime (k-means)",
    "routed_setting": "router's choice",
    "oracle_setting": "best setting on the labelling part",
}


def _lift_cells(block: dict) -> list[str]:
    if not block or not block.get("n"):
        return ["0", "–", "", "–", "–", "–"]
    over = block.get("lift_over_best_fixed") or {}
    routed = over.get("routed") or {}
    shuffled = over.get("shuffled_within_model") or {}
    rates = block.get("rates") or {}
    best = _get(rates, "best_fixed", "value")
    oracle = _get(rates, "oracle", "value")
    ratio = best / oracle if best is not None and oracle else None
    return [
        esc(block["n"]),
        pts(routed.get("value")),
        ci(routed.get("low"), routed.get("high"), pts),
        pts(shuffled.get("value")) + " " + ci(shuffled.get("low"), shuffled.get("high"), pts),
        f"{pct(best)} / {pct(oracle)}",
        pct(ratio, 0),
    ]


def routing_rows(result: dict, *, learned: bool | str = False) -> tuple[list[str], list[list[str]]]:
    """Per model (and, for a learned router, all models pooled): lift over best fixed.
    ``learned``: True or "learned" for the learned router, "learned_free" for the free one."""
    routing = _get(result, "routing") or {}
    if learned is True:
        learned = "learned"
    source = (routing.get(learned) or {}) if learned else routing
    per_model = dict(source.get("per_model") or {})
    if learned and per_model and source.get("subsets"):
        per_model = {"all models (pooled)": source} | per_model
    headers = [
        "model",
        "failures",
        "router − best fixed (points)",
        "95 % CI",
        "null: routes shuffled within the model [95 % CI]",
        "best fixed / oracle",
        "best fixed ÷ oracle",
        "steerable-hard",
        "router − best fixed (points)",
        "95 % CI",
        "null: routes shuffled within the model [95 % CI]",
        "best fixed / oracle",
        "best fixed ÷ oracle",
        "best fixed (per problem fold)",
    ]
    rows = []
    for model, entry in per_model.items():
        subsets = entry.get("subsets") or {}
        choices = ", ".join(dict.fromkeys(entry.get("best_fixed_choices") or [])) or "–"
        rows.append(
            [
                esc(model),
                *_lift_cells(subsets.get("all") or {}),
                *_lift_cells(subsets.get("steerable-hard") or {}),
                esc(choices),
            ]
        )
    return headers, rows


def _confusion_table(confusion: dict) -> str:
    columns = sorted({c for row in confusion.values() for c in row})
    rows = [
        [esc(t), *[esc(row.get(c, 0) or "·") for c in columns], esc(sum(row.values()))]
        for t, row in confusion.items()
    ]
    return table(["truth", *[esc(c) for c in columns], "n"], rows, text_columns=(0,))


def recovery_rows(recovery: dict) -> tuple[list[str], list[list[str]]]:
    headers = ["model", "compared with the truth", "n", "NMI", "null NMI (95th pct)", "p", "purity"]
    rows = []
    blocks = [("all models", recovery.get("pooled") or {})]
    blocks += list((recovery.get("per_model") or {}).items())
    for model, per_column in blocks:
        for column, block in per_column.items():
            null = block.get("null") or {}
            rows.append(
                [
                    esc(model),
                    esc(COLUMN_NAMES.get(column, column)),
                    esc(block.get("n", 0)),
                    fixed(block.get("nmi"), 2),
                    f"{fixed(null.get('nmi_mean'), 2)} ({fixed(null.get('nmi_high'), 2)})",
                    fixed(null.get("p_value"), 3),
                    fixed(block.get("purity"), 2),
                ]
            )
    return headers, rows


def control_section(result: dict | None, *, source: str | None = None) -> str:
    """The section's HTML ('' when ``result`` has no known-truth recovery)."""
    recovery = (result or {}).get("recovery")
    if not recovery:
        return ""
    routing = result.get("routing") or {}
    calibration = routing.get("calibration") or {}
    models = _get(result, "data", "models") or {}
    truth_maps = recovery.get("truth_maps") or {}
    mixtures = "; ".join(
        f"{esc(m)}: " + ", ".join(f"{esc(k)}→{esc(v)}" for k, v in sorted(truth_maps[m].items()))
        for m in sorted(truth_maps)
    )
    parts = [
        f'<h2 id="{SECTION_ID}">{esc(TITLE)}</h2>',
        '<p class="legend"><b>A positive control, not a result about natural failures.</b> '
        "These models were post-trained so that their failures follow mechanisms planted per "
        "problem, each built to be undone by a different intervention (docs/organism.md); the "
        f"truth — the problem's <code>{esc(recovery.get('field', ''))}</code> through each "
        "model's recipe — is fixed before any sampling and used only here, after the analysis. "
        "The question is whether the pipeline recovers it, and whether the router beats the "
        "best fixed intervention where the mechanisms are mixed."
        + (f" Source: <code>{esc(source)}</code>." if source else "")
        + "</p>",
        f"<p>{len(models)} model(s), {esc(_get(result, 'data', 'n_failures', default='–'))} "
        f"failures. Router: <code>{esc(routing.get('router', '–'))}</code>; calibration: "
        f"{esc(calibration.get('scheme', '–'))}.</p>",
    ]
    headers, rows = routing_rows(result)
    if rows:
        parts += [
            "<h3>Router against best fixed, per model</h3>",
            table(headers, rows, text_columns=(0, 13)),
            '<p class="legend">Protocol v2 within each model: scored on the scoring part, '
            "best fixed chosen on the labelling part of the other fold of the model's problems, "
            "oracle = each failure's best labelling-part setting; intervals: bootstrap over the "
            "model's problems (routes frozen). The null is the lift over best fixed of the "
            "router's routes shuffled among the model's failures: what permuting the features "
            "among them gives a rule that routes each failure on its own features (within one "
            "model it equals a random setting drawn with the router's shares). Rates are the "
            "chance of a rescue within the budget, in retry-equivalent samples "
            f"({esc(routing.get('budget_samples', '–'))}).</p>",
        ]
    else:
        parts.append(
            f"<p>Routing was not evaluated: {esc(_get(result, 'skipped', 'routing'))}.</p>"
        )
    for key, title, legend in (
        (
            "learned",
            "A learned router against best fixed (leave-one-model-out)",
            ": each model's failures are routed by the k nearest failures of the other "
            "models, to the setting best on their labelling parts; the model itself and every "
            "scoring part stay out of the fit. Evaluated as the rule is, routes frozen (the "
            "variance of fitting the router is not in the intervals; analysis.json's "
            "refitted_lift_over_best_fixed gives the pooled interval with the router refitted "
            "in the bootstrap, which leans low). It asks whether the signature carries "
            "per-failure routing information, which the rule may not read.",
        ),
        (
            "learned_free",
            "The free router: the learned router without reference drift",
            ": the learned router on the two features that come with the probes. It "
            "teacher-forces nothing under the reference, so it costs nothing beyond the probes "
            "and its lift is what a user gets at the same budget.",
        ),
    ):
        headers, rows = routing_rows(result, learned=key)
        if rows:
            parts += [
                f"<h3>{title}</h3>",
                table(headers, rows, text_columns=(0, 13)),
                '<p class="legend">'
                + esc(_get(routing, key, "router", default=""))
                + legend
                + "</p>",
            ]
    headers, rows = recovery_rows(recovery)
    parts += [
        "<h3>Recovery of the planted truth</h3>",
        table(headers, rows, text_columns=(0, 1)),
        '<p class="legend">Null: the truth permuted among each model\'s failures (keeps each '
        "model's mixture). Purity: share of failures whose group's most common truth is their "
        "own.</p>",
    ]
    if mixtures:
        parts.append(f'<p class="legend">Truth maps (value → truth): {mixtures}.</p>')
    for column, block in (recovery.get("pooled") or {}).items():
        parts += [
            f"<h4>Truth × {esc(COLUMN_NAMES.get(column, column))}, all models</h4>",
            _confusion_table(block.get("confusion") or {}),
        ]
    per_model = recovery.get("per_model") or {}
    if per_model:
        inner = []
        for model, per_column in per_model.items():
            for column, block in per_column.items():
                inner += [
                    f"<h4>{esc(model)}: truth × {esc(COLUMN_NAMES.get(column, column))}</h4>",
                    _confusion_table(block.get("confusion") or {}),
                ]
        parts.append(
            "<details><summary>Confusions per model</summary>" + "".join(inner) + "</details>"
        )
    return "\n".join(parts)


__all__ = ["SECTION_ID", "TITLE", "control_section"]
