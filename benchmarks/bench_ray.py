"""Ray executor with 2 actors vs the local executor, on this machine, same plan, same seed.

What is timed:

1. start-up (fixed cost, reported apart): starting a private local Ray cluster and the
   actors, each loading the model, until the first one answers;
2. sampling: ``fixable.sampling.sample`` of the same probe plan into a fresh run, with the
   local executor (one process; torch at its default thread count, and at one thread) and
   with the Ray executor (2 actors, ``num_cpus`` each, torch at one thread per actor),
   in turn, after a warm-up of each, so that load from other processes falls on all alike.

The ratios printed are local time / Ray time (above 1: Ray is faster), for the sampling
alone and for sampling plus the start-up cost, against both local baselines. On a loaded
machine torch's default of one thread per core can be far slower than one thread, which
is why both are shown. The runs are checked to hold the same rollouts.
The model is a random-init organism checkpoint in a temporary directory. Run with::

    RAY_AUTH_MODE=disabled nice -n 10 python benchmarks/bench_ray.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def build_model(root: Path, n_layer: int, n_embd: int) -> Path:
    import torch

    from fixable.organism.model import ModelConfig, OrganismLM, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(family="llama", n_layer=n_layer, n_head=4, n_embd=n_embd, block_size=256)
    model = OrganismLM(cfg)
    with torch.no_grad():  # sharper next-token distributions, like a trained model's
        model.embed_tokens.weight.mul_(6.0)
    return save_checkpoint(model, root / "model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (seconds)")
    parser.add_argument("--problems", type=int, default=None)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    problems = args.problems or (16 if args.quick else 96)
    max_tokens = args.max_tokens or (32 if args.quick else 96)
    repeats = args.repeats or (1 if args.quick else 3)

    import torch

    from fixable import schema
    from fixable.executors import LocalExecutor, RayExecutor
    from fixable.interventions import RETRY
    from fixable.sampling import sample
    from fixable.store import Run
    from fixable.tasks import get_task

    root = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    ray_tmp = tempfile.mkdtemp(prefix="fxbr-", dir="/tmp")  # short: Ray's socket paths
    model = build_model(root, n_layer=2 if args.quick else 4, n_embd=64 if args.quick else 128)
    task = get_task("chains", difficulties=[2, 3])
    chosen = task.problems(problems)
    options = dict(phase="probe", interventions=[RETRY], n=args.k, run_seed=3,
                   max_tokens=max_tokens, batch_size=64)  # fmt: skip
    counter = iter(range(1_000_000))

    local = LocalExecutor()
    local_backend = local.backend("organism", str(model), {})

    default_threads = torch.get_num_threads()

    def run_local(threads: int) -> Path:
        out = root / f"local-{next(counter)}"
        torch.set_num_threads(threads)
        try:
            sample(local_backend, task, chosen, out, executor=local, **options)
        finally:
            torch.set_num_threads(default_threads)
        return out

    started = time.perf_counter()
    executor = RayExecutor("local", actors=args.actors, num_cpus=args.num_cpus, temp_dir=ray_tmp)
    ray_backend = executor.backend("organism", str(model), {})
    startup = time.perf_counter() - started

    def run_ray() -> Path:
        out = root / f"ray-{next(counter)}"
        sample(ray_backend, task, chosen, out, executor=executor, **options)
        return out

    try:
        contenders = {
            f"local, {default_threads} torch threads": lambda: run_local(default_threads),
            "local, 1 torch thread": lambda: run_local(1),
            f"ray, {args.actors} actors": run_ray,
        }
        firsts = [fn() for fn in contenders.values()]  # warm-up, and the equality check
        content = [
            Run(p).rollouts().drop_columns(list(schema.NON_CONTENT)).to_pylist() for p in firsts
        ]
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for _ in range(repeats):
            for name, fn in contenders.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    finally:
        executor.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)

    rollouts = problems * args.k
    medians = {name: statistics.median(t) for name, t in times.items()}
    ray_name = f"ray, {args.actors} actors"
    ray_s = medians.pop(ray_name)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; ray: "
          f"{args.actors} actors x {args.num_cpus:g} CPU, one torch thread each")  # fmt: skip
    print(f"plan: {problems} problems x k={args.k} = {rollouts} rollouts, "
          f"max_tokens={max_tokens}, median of {repeats}")  # fmt: skip
    print(f"same rollouts (content columns) in all three: {content[0] == content[1] == content[2]}")
    print(f"start-up (local cluster + actors loading the model), fixed: {startup:.1f} s")
    print(f"{ray_name}: {ray_s:.2f} s ({rollouts / ray_s:.0f} rollouts/s)")
    for name, local_s in medians.items():
        print(f"{name}: {local_s:.2f} s ({rollouts / local_s:.0f} rollouts/s)")
        print(f"  ratio {name} / ray, sampling only: {local_s / ray_s:.2f}x; "
              f"with start-up: {local_s / (ray_s + startup):.2f}x")  # fmt: skip
        if ray_s < local_s:
            # local takes W*l, Ray startup + W*r: equal when the local run takes this long
            print(f"  break-even: Ray pays off above {startup / (1 - ray_s / local_s):.0f} s "
                  "of local sampling")  # fmt: skip
        else:
            print("  break-even: none (Ray is not faster than this baseline here)")


if __name__ == "__main__":
    main()
