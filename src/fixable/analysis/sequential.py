"""Sequential labelling (SPEC §3.2): sample uncertain failures' labelling part further, in
rounds, until their label's interval clears the thresholds or a cap is reached.

At R_label = 16 no steerable-hard or structural label can be certain (0 of 16 retry
successes leave a 95 % upper bound of 0.19 above the 0.05 threshold). ``sequential_labels``
reads a model's labelling part from a run, and for every failure whose label is
``uncertain`` samples ``round_size`` more rollouts of every setting under the phase
``label`` — new keys with their own seeds (``rollout_seed(run_seed, model/problem,
"label/<setting>", i)``), which ``labels.select_part`` counts in the labelling part and
never in the scoring part — then relabels, until no label is uncertain, or a failure's
labelling part reaches ``cap`` samples per setting, or ``max_rounds`` rounds are done.
The report says how many labels are certain before and after and what it cost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import pyarrow.compute as pc

from fixable.analysis.labels import (
    LABEL_PHASE,
    LabelThresholds,
    label_failures,
    rescue_matrix,
)
from fixable.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class SequentialReport:
    """What sequential labelling did for one model."""

    model: str
    n_failures: int
    certain_before: int
    certain_after: int
    samples_spent: int = 0  # label-phase rollouts sampled by this call
    cost_tokens: float = 0.0
    rounds: list[dict] = field(default_factory=list)
    stopped: str = ""  # "all certain", "cap reached", "max rounds"
    labels_after: dict = field(default_factory=dict)  # label → (certain, all)

    def to_dict(self) -> dict:
        return asdict(self)


def _labels(run, model: str, thresholds: LabelThresholds):
    table = run.rollouts(
        model=model,
        phase=["rescue", LABEL_PHASE],
        columns=[
            "model",
            "problem_id",
            "phase",
            "setting",
            "intervention",
            "sample_index",
            "status",
            "correct",
            "n_tokens",
            "cost_tokens",
        ],
    )
    matrix = rescue_matrix(table, thresholds, part="label")
    label_phase = table.filter(pc.equal(table["phase"], LABEL_PHASE))
    done = {}
    for pid, index in zip(
        label_phase["problem_id"].to_pylist(), label_phase["sample_index"].to_pylist(), strict=True
    ):
        done[pid] = max(done.get(pid, 0), int(index) + 1)
    return label_failures(matrix, thresholds), matrix, done


def sequential_labels(
    backend,
    task,
    problems: Sequence,
    run,
    *,
    settings: Sequence[str],
    thresholds: LabelThresholds | None = None,
    round_size: int = 16,
    cap: int = 128,
    max_rounds: int = 8,
    run_seed: int = 0,
    max_tokens: int = 160,
    batch_size: int = 256,
    progress: Callable[[dict], None] | None = None,
) -> SequentialReport:
    """Certify the labels of ``backend.model_name``'s failures in ``run`` (see the module
    docstring). ``problems`` are the task's problems (those not failed are ignored);
    ``settings`` the rescue grid (labels of ``fixable.interventions``)."""
    from fixable.interventions import parse_intervention
    from fixable.sampling import plan, sample_planned
    from fixable.store import Run

    if round_size < 1 or cap < 1 or max_rounds < 1:
        raise ConfigError("round_size, cap and max_rounds must be positive")
    thresholds = thresholds if thresholds is not None else LabelThresholds()
    run = run if isinstance(run, Run) else Run(run)
    model = backend.model_name
    grid = [parse_intervention(s) for s in settings]
    by_id = {p.id: p for p in problems}
    labels, matrix, done = _labels(run, model, thresholds)
    labelled = labels[labels["label"].notna()]
    report = SequentialReport(
        model,
        int(len(labelled)),
        int((~labelled["uncertain"].astype(bool)).sum()),
        0,
    )
    report.stopped = "all certain"
    for round_no in range(1, max_rounds + 1):
        uncertain = labelled[labelled["uncertain"].astype(bool)]
        if uncertain.empty:
            report.stopped = "all certain"
            break
        n_label = matrix.groupby("problem_id")["n"].min()
        todo, chosen = [], 0
        for pid in uncertain["problem_id"]:
            if pid not in by_id:
                logger.warning("%s: problem %s is not among the given problems", model, pid)
                continue
            have = int(n_label.get(pid, 0))
            extra = min(round_size, cap - have)
            if extra <= 0:
                continue
            start = done.get(pid, 0)
            planned = plan(model, [by_id[pid]], LABEL_PHASE, grid, start + extra, run_seed)
            todo += [p for p in planned if p.sample_index >= start]
            chosen += 1
        if not todo:
            report.stopped = "cap reached"
            break
        sampled = sample_planned(
            backend, task, todo, run, max_tokens=max_tokens, batch_size=batch_size
        )
        report.samples_spent += sampled.sampled
        report.cost_tokens += float(sampled.cost_tokens)
        labels, matrix, done = _labels(run, model, thresholds)
        labelled = labels[labels["label"].notna()]
        certain = int((~labelled["uncertain"].astype(bool)).sum())
        entry = {
            "round": round_no,
            "failures_sampled": chosen,
            "samples": sampled.sampled,
            "certain": certain,
            "uncertain": int(len(labelled) - certain),
        }
        report.rounds.append(entry)
        if progress is not None:
            progress(entry)
    else:
        report.stopped = "max rounds"
    if not labelled["uncertain"].astype(bool).any():
        report.stopped = "all certain"
    report.certain_after = int((~labelled["uncertain"].astype(bool)).sum())
    for label, part in labelled.groupby("label"):
        report.labels_after[str(label)] = {
            "certain": int((~part["uncertain"].astype(bool)).sum()),
            "all": int(len(part)),
        }
    return report
