"""Training throughput of the organism's two families, in tokens per second.

For each family (the zoo's architecture, ``fixable.organism.zoo.model_config``) it times
optimizer steps of the real pretraining step (mixed difficulties, right-padded to the
batch's longest sequence, AdamW) and, as the baseline measured in the same run (steps
interleaved), the same batches padded to the model's full ``block_size`` (what a loop with
fixed-shape batches does). It prints tokens/s (all positions processed), completion tokens/s (the positions
that carry loss) and the ratio to the baseline. With ``--rl`` it also times GRPO steps
(sampling dominates those).

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --steps 20 --threads 2
"""

from __future__ import annotations

import argparse
import random
import time

import torch


def time_steps(family: str, steps: int) -> dict[str, tuple[float, int, int]]:
    """Seconds, positions and loss positions of ``steps`` optimizer steps, for batches padded
    to their longest row ("ours") and to the full context ("baseline"). The two alternate
    step by step on two identical models, so that a change in machine load hits both."""
    from fixable.organism import zoo
    from fixable.organism.model import OrganismLM
    from fixable.organism.train import (
        TOKENIZER,
        collate,
        lm_loss,
        make_optimizer,
        sample_chain_example,
    )

    recipe = zoo.pretrain_recipe(family)
    runs = {}
    for kind in ("ours", "baseline"):
        torch.manual_seed(0)
        model = OrganismLM(recipe.model)
        runs[kind] = [model, make_optimizer(model, recipe.optim), 0.0, 0, 0]
    for step in range(steps + 2):  # two warm-up steps, not timed
        rng = random.Random(f"bench-{step}")
        prompts, completions = [], []
        for _ in range(recipe.batch_size):
            prompt, solution, _, _ = sample_chain_example(
                rng, recipe.subdists, recipe.difficulty_weights, recipe.distractor_rate
            )
            prompts.append(TOKENIZER.encode(prompt, bos=True))
            completions.append(TOKENIZER.encode(solution, eos=True))
        batch = collate(prompts, completions)
        grow = recipe.model.block_size - 1 - batch[0].shape[1]
        padded = tuple(torch.nn.functional.pad(t, (0, grow)) for t in batch)
        for kind, (inputs, targets, mask) in (("ours", batch), ("baseline", padded)):
            run = runs[kind]
            model, opt = run[0], run[1]
            t0 = time.perf_counter()
            loss, _ = lm_loss(model, inputs, targets, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step >= 2:
                run[2] += time.perf_counter() - t0
                run[3] += inputs.numel()
                run[4] += int(mask.sum())
    return {kind: tuple(run[2:]) for kind, run in runs.items()}


def time_rl(family: str, steps: int) -> tuple[float, int]:
    from dataclasses import replace

    from fixable.organism import zoo
    from fixable.organism.model import OrganismLM
    from fixable.organism.posttrain import _rl_step
    from fixable.organism.train import make_optimizer

    recipe = zoo.posttrain_recipe("rl", 0)
    recipe = replace(recipe, steps=steps)
    torch.manual_seed(0)
    model = OrganismLM(zoo.model_config(family))
    step_fn = _rl_step(recipe, model)
    opt = make_optimizer(model, recipe.optim)
    tokens = 0
    t0 = time.perf_counter()
    for step in range(steps):
        loss, metrics = step_fn(model, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        tokens += metrics["tokens"]
    return time.perf_counter() - t0, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps per family")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--rl", action="store_true", help="also time GRPO steps (slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.steps} timed steps")
    print(
        f"{'family':7} {'params':>8} {'tokens/s':>10} {'loss tok/s':>11} "
        f"{'baseline tok/s':>15} {'speed-up':>9}"
    )
    from fixable.organism import zoo
    from fixable.organism.model import OrganismLM

    for family in ("gpt", "llama"):
        params = OrganismLM(zoo.model_config(family)).num_parameters()
        timed = time_steps(family, args.steps)
        elapsed, tokens, loss_tokens = timed["ours"]
        base_elapsed, _, base_loss_tokens = timed["baseline"]
        # compare useful work: completion tokens (the same batches) per second
        ours = loss_tokens / elapsed
        baseline = base_loss_tokens / base_elapsed
        print(
            f"{family:7} {params:>8,} {tokens / elapsed:>10,.0f} {ours:>11,.0f} "
            f"{baseline:>15,.0f} {ours / baseline:>8.2f}x"
        )
        if args.rl:
            rl_elapsed, rl_tokens = time_rl(family, max(2, args.steps // 5))
            print(
                f"{'':7} GRPO: {rl_elapsed / max(2, args.steps // 5):.2f} s/step, "
                f"{rl_tokens / rl_elapsed:,.0f} trained tokens/s (sampling included)"
            )


if __name__ == "__main__":
    main()
