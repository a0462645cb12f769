"""Measure the organism's intended failure kinds on the shipped zoo (numbers for docs/organism.md).

For each family it samples held-out (test split) problems and prints accuracies under the
interventions each failure kind is designed for:

* long chains (difficulty 4) from the base: T=1 vs T=0.5 vs greedy;
* narrow SFT (``move`` only) on ``arith``/``cross``: the SFT model at T=1, mixed with the
  base (alpha 0.5), its first intermediate checkpoint, and the base itself;
* RL: accuracy at T=1 vs T=1.3 and mean token entropy vs the base;
* ``alien`` problems: the best accuracy any model of the family reaches at T=1.

    python benchmarks/organism_failure_kinds.py --per-cell 32
"""

from __future__ import annotations

import argparse

import torch

from fixable.organism import zoo
from fixable.organism.decode import decode
from fixable.organism.train import TOKENIZER
from fixable.tasks.chains import ChainsTask
from fixable.types import seed_of

SEED = 7


def accuracy(
    model, problems, *, temperature=1.0, greedy=False, reference=None, alpha=0.0, samples=2
) -> tuple[float, float]:
    """Share of correct samples and mean per-token entropy of the policy along them."""
    task = ChainsTask()
    rows = [p for p in problems for _ in range(1 if greedy else samples)]
    seeds = [seed_of("kinds", p.id, k) for p in problems for k in range(1 if greedy else samples)]
    out = decode(
        model,
        [TOKENIZER.encode(p.prompt, bos=True) for p in rows],
        seeds,
        temperature=temperature,
        greedy=greedy,
        reference=reference,
        alpha=alpha,
        max_new_tokens=160,
        batch_size=1024,
    )
    correct = [
        task.extract(TOKENIZER.decode(ids)) == p.answer
        for ids, p in zip(out.token_ids, rows, strict=True)
    ]
    ent = [sum(e) / len(e) for e in out.entropies if e]
    return sum(correct) / len(correct), sum(ent) / max(1, len(ent))


def problems(subdists, difficulties, n):
    return ChainsTask(subdists=subdists, difficulties=difficulties).problems(
        n, seed=SEED, split="test"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--per-cell", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.per_cell
    for family in ("gpt", "llama"):
        base, _ = zoo.load(f"{family}-base")
        print(f"== {family}")
        long = problems(["arith", "move", "cross"], [4], 3 * n)
        g, _ = accuracy(base, long, greedy=True)
        t1, _ = accuracy(base, long)
        t05, _ = accuracy(base, long, temperature=0.5)
        print(f"long chains d4, base: greedy {g:.3f}  T=0.5 {t05:.3f}  T=1 {t1:.3f}")

        forgotten = problems(["arith", "cross"], [1, 2, 3], 2 * n)
        for seed in (0, 1):
            name = f"{family}-sft-s{seed}"
            sft, _ = zoo.load(name)
            first = next(iter(zoo.checkpoints(name)))
            early, _ = zoo.load(f"{name}@{first}")
            a_sft, _ = accuracy(sft, forgotten)
            a_mix, _ = accuracy(sft, forgotten, reference=base, alpha=0.5)
            a_ck, _ = accuracy(early, forgotten)
            a_base, _ = accuracy(base, forgotten)
            print(
                f"{name} on arith/cross d1-3: T=1 {a_sft:.3f}  mix(0.5) {a_mix:.3f}  "
                f"{first} {a_ck:.3f}  base {a_base:.3f}"
            )

        trained = problems(["arith", "move", "cross"], [2, 3, 4], 3 * n)
        _, h_base = accuracy(base, trained)
        for seed in (0, 1):
            rl, _ = zoo.load(f"{family}-rl-s{seed}")
            a1, h1 = accuracy(rl, trained)
            a13, _ = accuracy(rl, trained, temperature=1.3)
            print(
                f"{family}-rl-s{seed} on d2-4: T=1 {a1:.3f}  T=1.3 {a13:.3f}  "
                f"entropy {h1:.4f} (base {h_base:.4f})"
            )

        alien = problems(["alien"], [1, 2, 3], n)
        best = max(
            accuracy(zoo.load(m)[0], alien)[0] for m in zoo.list_models() if m.startswith(family)
        )
        print(f"alien d1-3: best T=1 accuracy over the {family} models {best:.3f}")


if __name__ == "__main__":
    main()
