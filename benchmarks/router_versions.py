"""The routing rule's versions side by side on the same failures: what each change did.

The first version of ``SignatureRouter`` sent high-drift failures to ``mix`` and took its
median thresholds per model; the current one tries the earliest ``checkpoint`` first and
takes medians over all failures together (docs/analysis.md says why). This script
evaluates the four combinations with the analysis' own code (features, labels, outcomes,
``route_failures``, ``evaluate_routing``: the same compute matching, cross-fitted best
fixed baseline and bootstrap over problems) on the given runs, optionally on a subset of
their models — e.g. models that were not looked at when the rule changed:

    python benchmarks/router_versions.py RUN [RUN...] [--model 'gpt-*-s1' ...] [--budget 16]

It prints one row per version and subset (all failures, steerable-hard): the routed
rescue rate, the lift over best fixed and over retry with 95 % intervals, and the share of
the oracle gap closed. Nothing here is fitted to rescue outcomes except the best fixed
baseline, which is cross-fitted on held-out problems as in the analysis.

This is the protocol-v1 evaluation (labels and scores from the same samples, thresholds
over the routed failures), kept to reproduce the history in docs/analysis.md; the
analysis itself evaluates the router under protocol v2 (``fixable.analysis.evaluation``).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from fixable.analysis.labels import LabelThresholds, label_failures, rescue_matrix
from fixable.analysis.pipeline import load_runs
from fixable.analysis.routing import (
    Outcomes,
    SignatureRouter,
    evaluate_routing,
    route_failures,
)
from fixable.features import FAILURE_KEY, failure_features

VERSIONS = [
    ("first: mix, per-model medians", "mix", "model"),
    ("mix, medians over all failures", "mix", None),
    ("checkpoint, per-model medians", "checkpoint", "model"),
    ("current: checkpoint, medians over all", "checkpoint", None),
]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--model", action="append", default=None, help="model name or pattern")
    ap.add_argument("--budget", type=float, default=None, help="default: R // 2")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    table, _ = load_runs(args.runs, models=args.model)
    features = failure_features(table)
    thresholds = LabelThresholds()
    matrix = rescue_matrix(table, thresholds)
    labels = label_failures(matrix, thresholds).set_index(FAILURE_KEY)["label"]
    outcomes = Outcomes.from_matrix(matrix, failures=features)
    index = pd.MultiIndex.from_frame(outcomes.keys[FAILURE_KEY])
    rows = features.set_index(FAILURE_KEY).loc[index].reset_index()
    budget = args.budget or max(1, int(outcomes.n.min()) // 2)
    models = sorted(rows["model"].unique())
    print(
        f"{len(outcomes)} failures of {len(models)} models ({', '.join(models)}); "
        f"settings: {', '.join(outcomes.settings)}; budget {budget:g} retry-equivalent samples"
    )
    print(
        f"\n| rule | failures | n | routed | best fixed | lift vs best fixed [95 % CI] "
        f"| lift vs retry [95 % CI] | oracle gap closed |\n|{'---|' * 8}"
    )
    for name, toward, by in VERSIONS:
        routed = route_failures(
            SignatureRouter(toward_reference=toward), rows, outcomes.settings, by=by
        )
        result = evaluate_routing(
            outcomes,
            routed,
            budget=budget,
            labels=labels.loc[index].to_numpy(),
            n_boot=args.n_boot,
            random_state=args.seed,
            budgets=[budget],
        )
        for subset, block in result["subsets"].items():
            if not block.get("n"):
                continue
            rates, lift = block["rates"], block["lift"]

            def pts(e):
                return f"{e['value'] * 100:+.1f} [{e['low'] * 100:+.1f}, {e['high'] * 100:+.1f}]"

            gap = block["oracle_gap_closed"]["value"]
            print(
                f"| {name} | {subset} | {block['n']} | {rates['routed']['value'] * 100:.1f} % "
                f"| {rates['best_fixed']['value'] * 100:.1f} % | {pts(lift['best_fixed'])} "
                f"| {pts(lift['retry'])} | {'–' if np.isnan(gap) else f'{gap * 100:.0f} %'} |"
            )


if __name__ == "__main__":
    main()
