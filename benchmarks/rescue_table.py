"""Which intervention settings rescue a model's failures: a markdown table per run(s).

For every model in the given runs, among its failed problems (0 of K probe rollouts
correct, backend errors not counted as attempts), the share that each rescue setting
rescues — at least ``--threshold`` (default 0.5, SPEC §3.3's ``steer_hard``) of the
setting's R rescue rollouts correct — and the share that setting rescues *alone* (rescued
by it and by no other setting of the run). Rows are models, columns settings; a cell reads
``rescued % (alone %)``, and ``–`` where the model's grid lacks the setting. ``any`` is the
share rescued by at least one setting. When each model sampled one checkpoint (each its
own run's), they share a column ``checkpoint`` and a line below the table names them.

The rollouts come from DuckDB over each run (``fixable.store.Run(path).query``, which runs
SQL over the views of ``Run.connect()``); the
per-failure rescue rates are ``fixable.analysis.labels.rescue_matrix`` and the probe
verdicts ``fixable.features.failed_problems``, the same code the analysis uses.

    python benchmarks/rescue_table.py RUN [RUN...] [--threshold 0.5]

Runs written by ``benchmarks/bench_sweep.py --out RUN`` or ``fixable sample ... --r 32``.
"""

from __future__ import annotations

import argparse
import logging
import sys

import pandas as pd
import pyarrow as pa

from fixable.analysis.labels import LabelThresholds, rescue_matrix
from fixable.features import FAILURE_KEY, failed_problems
from fixable.interventions import KINDS, parse_intervention
from fixable.store import Run

log = logging.getLogger(__name__)

_COLUMNS = "model, problem_id, phase, setting, intervention, status, correct, n_tokens, cost_tokens"


def read_runs(paths: list[str]) -> pa.Table:
    """The columns the table needs, from every run, through DuckDB."""
    tables = []
    for path in paths:
        # Run.query is DuckDB over Run.connect()'s views, with corrupt shards reported
        tables.append(Run(path).query(f"SELECT {_COLUMNS} FROM rollouts"))
    return pa.concat_tables(tables)


def setting_order(label: str) -> tuple:
    """retry first, then the kinds in their declared order, then by parameter."""
    if label in KINDS:  # a merged column (``checkpoint``)
        return (list(KINDS).index(label), 0, 0, "")
    intervention = parse_intervention(label)
    value = intervention.value
    return (
        list(KINDS).index(intervention.kind),
        0 if isinstance(value, (int, float)) else 1,
        value if isinstance(value, (int, float)) else 0,
        str(value),
    )


def rescue_shares(rollouts: pa.Table, threshold: float) -> tuple[pd.DataFrame, list[str]]:
    """Per model: failures, then per setting the share rescued and the share rescued alone."""
    probe = failed_problems(rollouts)
    failures = probe.loc[probe["failed"], FAILURE_KEY]
    matrix = rescue_matrix(rollouts, LabelThresholds())
    matrix = matrix.merge(failures, on=FAILURE_KEY)  # rescue rows of probe failures only
    checkpoints = merge_checkpoints(matrix)
    settings = sorted(matrix["setting"].unique(), key=setting_order)
    sampled = matrix.groupby("model")["setting"].agg(set).to_dict()
    rescued = (
        matrix.assign(rescued=matrix["rate"] >= threshold)  # NaN rate (no valid sample): False
        .pivot_table(index=FAILURE_KEY, columns="setting", values="rescued", aggfunc="first")
        .reindex(columns=settings)
        .fillna(False)
        .astype(bool)
    )
    # failures without any rescue rollout count in the denominator as rescued by nothing
    rescued = rescued.reindex(pd.MultiIndex.from_frame(failures), fill_value=False)
    missing = len(failures) - matrix[FAILURE_KEY].drop_duplicates().shape[0]
    if missing:
        log.warning("%d failed problem(s) have no rescue rollouts: counted as not rescued", missing)

    rows = []
    by_how_many = rescued.sum(axis=1)
    for model, group in rescued.groupby(level="model"):
        alone_mask = by_how_many.loc[group.index] == 1
        n = len(group)
        row = {
            "model": model,
            "failures": n,
            "any": group.any(axis=1).mean() if n else float("nan"),
        }
        for setting in settings:
            if setting not in sampled.get(model, ()):
                continue  # not in this model's grid: shown as "–", not as 0 %
            row[setting] = group[setting].mean()
            row[f"{setting} alone"] = (group[setting] & alone_mask).mean()
        rows.append(row)
    for model in sorted(set(probe["model"]) - {r["model"] for r in rows}):
        rows.append({"model": model, "failures": 0})  # a model that failed nothing
    return pd.DataFrame(rows), settings, checkpoints


def merge_checkpoints(matrix: pd.DataFrame) -> dict[str, str]:
    """Where every model sampled at most one checkpoint (each its own run's, e.g. step-50
    for RL and step-10 for SFT), put them in one column ``checkpoint``: model → label.
    Otherwise leave each checkpoint its own column and return nothing."""
    is_checkpoint = matrix["intervention"] == "checkpoint"
    labels = matrix.loc[is_checkpoint].groupby("model")["setting"].unique()
    if labels.empty or labels.map(len).max() > 1:
        return {}
    matrix.loc[is_checkpoint, "setting"] = "checkpoint"
    return {model: values[0] for model, values in labels.items()}


def percent(value) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.0f} %"


def markdown(shares: pd.DataFrame, settings: list[str]) -> str:
    header = ["model", "n failures", *settings, "any"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in shares.to_dict("records"):
        cells = [row["model"], f"{row['failures']:,}"]
        for setting in settings:
            cells.append(f"{percent(row.get(setting))} ({percent(row.get(f'{setting} alone'))})")
        cells.append(percent(row.get("any")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run directories")
    parser.add_argument(
        "--threshold",
        type=float,
        default=LabelThresholds().steer_hard,
        help="share of a setting's rescue rollouts that must be correct (default 0.5)",
    )
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")

    rollouts = read_runs(args.runs)
    shares, settings, checkpoints = rescue_shares(rollouts, args.threshold)
    if not settings:
        sys.exit(f"no rescue rollouts of a failed problem in {', '.join(args.runs)}")
    print(
        f"Share of failed problems (0/K probe rollouts correct) with >= {args.threshold:.0%} "
        "of a setting's R rescue rollouts correct; in parentheses, rescued by that setting "
        "and by no other."
    )
    print()
    print(markdown(shares, settings))
    if checkpoints:
        print()
        print(
            "checkpoint: "
            + ", ".join(f"{model} {label}" for model, label in sorted(checkpoints.items()))
        )


if __name__ == "__main__":
    main()
