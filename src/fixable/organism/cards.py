"""Model cards: what a zoo model can do, measured on held-out (test split) chains problems.

A card holds greedy and T=1 accuracy per sub-distribution × difficulty, the same per
difficulty over the training sub-distributions, the mean per-token entropy of the
model's own T=1 samples, and the model's identity (family, method, seed, parameters,
bytes). Every number comes from ``evaluate``: a fixed problem set (``CARD_SEED``) and
rollout seeds derived from each problem's id, so two evaluations of the same weights
agree exactly, and two models are compared on the very same problems.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import torch

from fixable.organism.model import OrganismLM
from fixable.organism.posttrain import sample
from fixable.organism.train import TOKENIZER
from fixable.tasks.chains import DIFFICULTY_STEPS, SUBDISTS, TRAIN_SUBDISTS, ChainsTask
from fixable.types import seed_of

log = logging.getLogger(__name__)

CARD_SEED = 20250  # the card's problem set; disjoint from training data (test split)


def card_problems(n_per_cell: int) -> list:
    """``n_per_cell`` test-split problems for every (sub-distribution, difficulty) cell."""
    problems = []
    for subdist in SUBDISTS:
        for difficulty in DIFFICULTY_STEPS:
            task = ChainsTask(subdists=[subdist], difficulties=[difficulty])
            problems += task.problems(n_per_cell, seed=CARD_SEED, split="test")
    return problems


def evaluate(
    model: OrganismLM,
    *,
    n_per_cell: int = 16,
    t1_samples: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Accuracy tables and mean token entropy of ``model`` on the card's problem set."""
    task = ChainsTask()
    problems = card_problems(n_per_cell)
    prompts = [p.prompt for p in problems]
    if progress:
        progress("greedy")
    greedy = sample(model, prompts, [0] * len(prompts), greedy=True, batch_size=1024)
    t1_prompts = [p for p in prompts for _ in range(t1_samples)]
    t1_seeds = [seed_of("card", p.id, k) for p in problems for k in range(t1_samples)]
    if progress:
        progress("T=1")
    t1 = sample(model, t1_prompts, t1_seeds, temperature=1.0, batch_size=1024)

    def correct(ids, problem) -> bool:
        return task.extract(TOKENIZER.decode(ids)) == problem.answer

    cells = {"greedy": defaultdict(list), "t1": defaultdict(list)}
    entropy_by_subdist: dict[str, list[float]] = defaultdict(list)
    for i, p in enumerate(problems):
        key = (p.meta["subdist"], p.meta["difficulty"])
        cells["greedy"][key].append(correct(greedy.token_ids[i], p))
        for k in range(t1_samples):
            j = i * t1_samples + k
            cells["t1"][key].append(correct(t1.token_ids[j], p))
            ent = t1.entropies[j]
            if ent:
                entropy_by_subdist[p.meta["subdist"]].append(sum(ent) / len(ent))

    def mean(xs) -> float:
        return round(sum(xs) / len(xs), 4) if xs else float("nan")

    out: dict = {"n_per_cell": n_per_cell, "t1_samples": t1_samples, "card_seed": CARD_SEED}
    for mode, table in cells.items():
        out[f"{mode}_accuracy"] = {
            s: {str(d): mean(table[(s, d)]) for d in DIFFICULTY_STEPS} for s in SUBDISTS
        }
        out[f"{mode}_by_difficulty"] = {  # over the sub-distributions models were trained on
            str(d): mean([x for s in TRAIN_SUBDISTS for x in table[(s, d)]])
            for d in DIFFICULTY_STEPS
        }
        out[f"{mode}_by_subdist"] = {
            s: mean([x for d in DIFFICULTY_STEPS for x in table[(s, d)]]) for s in SUBDISTS
        }
    out["mean_entropy_by_subdist"] = {s: mean(v) for s, v in entropy_by_subdist.items()}
    out["mean_entropy"] = mean([x for s in TRAIN_SUBDISTS for x in entropy_by_subdist[s]])
    out["teacher_forced"] = teacher_forced(model, problems)
    return out


@torch.no_grad()
def teacher_forced(model: OrganismLM, problems: list) -> dict:
    """Per difficulty, over the training sub-distributions: mean completion loss (nats per
    token), token accuracy and whole-chain argmax accuracy on the gold solutions.

    No sampling, so it is exact and cheap, and it moves smoothly with training even
    where a tiny model solves nothing yet (the rebuild check of the micro model)."""
    from fixable.organism.train import collate, lm_loss

    model.eval()
    out = {}
    for d in DIFFICULTY_STEPS:
        chosen = [
            p for p in problems if p.meta["difficulty"] == d and p.meta["subdist"] in TRAIN_SUBDISTS
        ]
        if not chosen:
            continue
        prompts = [TOKENIZER.encode(p.prompt, bos=True) for p in chosen]
        completions = [TOKENIZER.encode(p.meta["solution"], eos=True) for p in chosen]
        _, metrics = lm_loss(model, *collate(prompts, completions))
        out[str(d)] = {
            "loss": round(metrics["loss"], 5),
            "token_accuracy": round(metrics["tok_acc"], 5),
            "chain_accuracy": round(metrics["seq_acc"], 5),
        }
    return out


def format_card(name: str, card: dict) -> str:
    """The card as a few lines of text (``fixable zoo list``)."""
    params = card.get("params", 0)
    size = card.get("size_bytes", 0)
    lines = [
        f"{name}  family={card.get('family')} method={card.get('method')} "
        f"seed={card.get('seed')} reference={card.get('base') or '-'}",
        f"  params={params:,} size={size / 1e6:.2f} MB "
        f"mean_entropy={card.get('mean_entropy', float('nan')):.3f} nats "
        f"checkpoints={','.join(card.get('checkpoints', [])) or '-'}",
    ]
    if card.get("planted"):
        lines += _planted_lines(card["planted"])
    levels = list(DIFFICULTY_STEPS)
    header = "  " + " " * 14 + " ".join(f"{'d' + str(d):>6}" for d in levels) + f" {'all':>6}"
    lines.append(header)
    for mode, label in (("greedy", "greedy"), ("t1", "T=1")):
        by_d = card.get(f"{mode}_by_difficulty", {})
        by_s = card.get(f"{mode}_by_subdist", {})
        train_all = [by_s.get(s) for s in TRAIN_SUBDISTS if by_s.get(s) is not None]
        overall = sum(train_all) / len(train_all) if train_all else float("nan")
        lines.append(
            f"  {label + ' train':<14}"
            + " ".join(_pct(by_d.get(str(d))) for d in levels)
            + f" {_pct(overall)}"
        )
        table = card.get(f"{mode}_accuracy", {})
        for s in SUBDISTS:
            row = table.get(s, {})
            lines.append(
                f"  {label + ' ' + s:<14}"
                + " ".join(_pct(row.get(str(d))) for d in levels)
                + f" {_pct(by_s.get(s))}"
            )
    return "\n".join(lines)


def _planted_lines(planted: dict) -> list[str]:
    """The planted mixture (share of keys per mechanism, which keys) and its measured
    greedy / T=1 accuracy per mechanism on ``chains-planted``."""
    by_mech: dict[str, list[str]] = {}
    for key, mech in sorted(planted["mixture"].items()):
        by_mech.setdefault(mech, []).append(key)
    shares = planted.get("shares", {})
    lines = [
        f"  planted ({planted.get('dose')}): "
        + ", ".join(
            f"{m} {100 * shares.get(m, 0):.0f}% (keys {''.join(keys)})"
            for m, keys in by_mech.items()
        )
    ]
    measured = planted.get("measured")
    if measured:
        greedy, t1 = measured["greedy_by_mechanism"], measured["t1_by_mechanism"]
        lines.append(
            "  planted accuracy greedy / T=1: "
            + ", ".join(f"{m} {_pct(greedy[m]).strip()} / {_pct(t1[m]).strip()}" for m in greedy)
        )
    return lines


def markdown_table(cards: dict[str, dict]) -> str:
    """One row per model: greedy accuracy per difficulty (training sub-distributions), T=1
    accuracy on d1-d4, greedy accuracy per sub-distribution, mean token entropy."""
    levels = list(DIFFICULTY_STEPS)
    head = (
        ["model", "params"]
        + [f"greedy d{d}" for d in levels]
        + ["T=1 d1-4"]
        + [f"greedy {s}" for s in SUBDISTS]
        + ["entropy"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, card in cards.items():
        by_d, t1 = card["greedy_by_difficulty"], card["t1_by_difficulty"]
        t1_short = sum(t1[str(d)] for d in levels[:4]) / 4
        row = (
            [name, f"{card['params']:,}"]
            + [f"{100 * by_d[str(d)]:.0f}" for d in levels]
            + [f"{100 * t1_short:.0f}"]
            + [f"{100 * card['greedy_by_subdist'][s]:.0f}" for s in SUBDISTS]
            + [f"{card['mean_entropy']:.3f}"]
        )
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pct(x) -> str:
    if x is None or x != x:
        return "  -   "
    return f"{100 * x:5.1f}%"
