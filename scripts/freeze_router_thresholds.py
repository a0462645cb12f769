"""Produce the shipped router thresholds (src/fixable/analysis/router_thresholds.json).

Probes the zoo's calibration models (default: every seed-1 model of the four methods in
``zoo.DEMO_METHODS``) on chains test problems the demo and the study never draw
(problem_seed 1), K = 8 rollouts each with reference log-probs, then writes each family's
feature medians over those failures with their provenance. The run directory is kept (resumable) so the thresholds can be traced
to their rollouts.

    python scripts/freeze_router_thresholds.py --run runs/calibration-s1
"""

from __future__ import annotations

import argparse
import logging
import sys

from fixable.analysis.thresholds import DEFAULTS_FILE, freeze_thresholds, write_defaults


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run directory for the probe rollouts")
    parser.add_argument("--seed-of-models", type=int, default=1, help="zoo training seed")
    parser.add_argument("--problems", type=int, default=128)
    parser.add_argument("--problem-seed", type=int, default=1)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--out", default=str(DEFAULTS_FILE))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    from fixable.demo import _zoo_info
    from fixable.features import failure_features
    from fixable.organism import zoo
    from fixable.provenance import git_revision
    from fixable.registry import backends
    from fixable.sampling import PROBE, sample
    from fixable.store import Run
    from fixable.tasks import get_task

    torch.set_num_threads(1)
    models = [
        m
        for m in zoo.list_models()
        if _zoo_info(m).get("seed") == args.seed_of_models
        # the four methods the shipped thresholds were frozen on (broad SFT came later)
        and _zoo_info(m).get("method") in zoo.DEMO_METHODS
    ]
    task = get_task("chains")
    problems = task.problems(args.problems, seed=args.problem_seed, split="test")
    run = Run.create(args.run)
    for model in models:
        backend = backends.create("organism", model)
        sample(backend, task, problems, run, phase=PROBE, n=args.k, run_seed=0, batch_size=512)
    features = failure_features(run.rollouts(where="phase = 'probe'"))
    command = "python scripts/freeze_router_thresholds.py " + " ".join(argv or sys.argv[1:])
    doc = freeze_thresholds(
        features,
        {m: _zoo_info(m)["family"] for m in models},
        provenance={
            "command": command,
            "task": "chains",
            "split": "test",
            "problem_seed": args.problem_seed,
            "problems_per_model": args.problems,
            "k": args.k,
            "backend": "organism",
            "run_seed": 0,
            "git": git_revision(),
        },
    )
    path = write_defaults(doc, args.out)
    for family, entry in doc["families"].items():
        print(family, entry["n_failures"], entry["thresholds"])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
