"""``fixable sample``: sample rollouts of a model on a task into a run directory.

A thin shell over ``fixable.protocol.sample_from_config``: options (or a TOML run file,
``--config``) become a ``RunConfig``; a progress bar shows rollouts/s, tokens/s and the
ETA. Re-running the same command resumes: keys already in the run are skipped.
"""

from __future__ import annotations

import json

import click

from fixable.config import PHASES, load_run_file, resolve_config
from fixable.errors import ConfigError


def _parse_options(pairs: tuple[str, ...], flag: str) -> dict | None:
    """``KEY=VALUE`` pairs; a value is read as JSON when it parses (numbers, lists, true),
    ``none``/``null`` as None, a comma-separated value as a list, anything else as a string."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = _value(raw.strip())
    return out


def _value(raw: str):
    if raw.lower() in ("none", "null"):
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if "," in raw:
        return [_value(part.strip()) for part in raw.split(",") if part.strip()]
    return raw


class _Bars:
    """One tqdm bar per (model, phase): rollouts/s and ETA from tqdm, tokens/s beside."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.current = None

    def __call__(self, p) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.current != (p.model, p.phase):
            self.close()
            self.current = (p.model, p.phase)
            self.bar = tqdm(
                total=p.total,
                desc=f"{p.model} {p.phase}",
                unit="rollout",
                dynamic_ncols=True,
                smoothing=0.1,
            )
            if p.skipped:
                self.bar.write(
                    f"{p.model} {p.phase}: {p.skipped} rollouts already in the run, skipped"
                )
        self.bar.update(p.done - self.bar.n)
        if p.elapsed_s > 0:
            self.bar.set_postfix_str(f"{p.tokens / p.elapsed_s:,.0f} tok/s", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _describe(report) -> str:
    line = (
        f"{report.model} {report.phase}: {report.sampled} sampled, {report.skipped} already "
        f"present; {report.correct} correct, {report.errors} failed requests, "
        f"{report.tokens:,} tokens in {report.wall_s:.1f} s"
    )
    other = {k: v for k, v in getattr(report, "token_counts", {}).items() if k != "token_ids"}
    if other:  # a server without token ids: say where the counts come from
        sources = ", ".join(f"{v} from {k.replace('_', ' ')}" for k, v in sorted(other.items()))
        line += f" (no token ids from the backend; token counts: {sources})"
    return line


@click.command("sample")
@click.option(
    "--model",
    "-m",
    "models",
    multiple=True,
    help="Policy to sample: zoo name, checkpoint directory or served id (repeatable).",
)
@click.option("--task", "-t", default=None, help="Task name (default chains).")
@click.option("--backend", "-b", default=None, help="Backend name (default organism).")
@click.option("--problems", "-n", type=int, default=None, help="Number of problems (default 100).")
@click.option(
    "--problem-seed", type=int, default=None, help="Which problems a generated task draws."
)
@click.option("--split", default=None, help="Task split (default test).")
@click.option("--k", type=int, default=None, help="Probe rollouts per problem (default 8).")
@click.option(
    "--r",
    type=int,
    default=None,
    help="Rescue rollouts per failed problem and setting (default 32).",
)
@click.option(
    "--interventions",
    "-i",
    default=None,
    help='Rescue grid, e.g. "retry;temperature:0.3,0.6,1.3;mix:0.25,0.5;dola:2".',
)
@click.option(
    "--phase",
    type=click.Choice(PHASES),
    default=None,
    help="probe, rescue or sweep (default: sweep when --r or --interventions is "
    "given, else probe).",
)
@click.option("--seed", type=int, default=None, help="Run seed (default 0).")
@click.option("--max-tokens", type=int, default=None, help="Longest completion (default 160).")
@click.option(
    "--batch-size", type=int, default=None, help="Requests per backend call (default 256)."
)
@click.option(
    "--flush-every", type=int, default=None, help="Rollouts per shard written (default 2048)."
)
@click.option(
    "--task-option",
    "-T",
    "task_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Task constructor option, e.g. -T difficulties=4,5 (repeatable).",
)
@click.option(
    "--backend-option",
    "-B",
    "backend_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Backend constructor option, e.g. -B reference=none (repeatable).",
)
@click.option(
    "--no-reference-scores",
    is_flag=True,
    default=False,
    help="Do not teacher-force probe rollouts under the reference model.",
)
@click.option("--worker", default=None, help="Name of this writer (default host-pid).")
@click.option(
    "--part",
    default=None,
    metavar="I/N",
    help="Sample only share I of N of the problems (many workers, one run).",
)
@click.option("--out", "-o", default=None, help="Run directory to write (or resume).")
@click.option(
    "--config",
    "-c",
    "run_file",
    default=None,
    metavar="RUN.toml",
    help="Run file (TOML) or a run's manifest.json to reproduce; options override it.",
)
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Sample on Ray actors: auto (a running cluster, else a local one), local, or "
    "HOST:PORT / ray://HOST:10001 (see docs/ray.md).",
)
@click.option(
    "--ray-option",
    "-R",
    "ray_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Ray executor option, e.g. -R actors=2 -R num_cpus=0.5 -R num_gpus=1 (repeatable).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def command(
    models,
    task,
    backend,
    problems,
    problem_seed,
    split,
    k,
    r,
    interventions,
    phase,
    seed,
    max_tokens,
    batch_size,
    flush_every,
    task_options,
    backend_options,
    no_reference_scores,
    worker,
    part,
    out,
    run_file,
    ray_address,
    ray_options,
    quiet,
):
    """Sample rollouts into a run directory; re-running the same command resumes it.

    \b
    fixable sample --model llama-rl-s0 --task chains --problems 200 --k 8 --out runs/rl
    fixable sample --model llama-rl-s0 --task chains --problems 200 --k 8 --r 32 \\
        --interventions "retry;temperature:0.3,0.6,1.3;mix:0.25,0.5" --out runs/rl
    """
    from fixable.protocol import sample_from_config

    if phase is None and (r is not None or interventions is not None):
        in_file = load_run_file(run_file).get("phase") if run_file else None
        phase = None if in_file else "sweep"
    config = resolve_config(
        run_file,
        models=models or None,
        task=task,
        backend=backend,
        problems=problems,
        problem_seed=problem_seed,
        split=split,
        k=k,
        r=r,
        interventions=interventions,
        phase=phase,
        seed=seed,
        max_tokens=max_tokens,
        batch_size=batch_size,
        flush_every=flush_every,
        task_options=_parse_options(task_options, "--task-option"),
        backend_options=_parse_options(backend_options, "--backend-option"),
        score_reference=False if no_reference_scores else None,
        worker=worker,
        part=part,
        out=out,
    )
    from fixable.executors import make_executor

    executor = make_executor(ray_address, _parse_options(ray_options, "--ray-option"))
    bars = _Bars(enabled=not quiet)
    try:
        reports = sample_from_config(config, progress=bars, executor=executor)
    finally:
        bars.close()
        executor.close()
    if getattr(executor, "losses", None):
        click.echo(executor.summary(), err=True)
    for report in reports:
        if hasattr(report, "probe"):  # a sweep
            click.echo(_describe(report.probe))
            click.echo(
                f"{report.probe.model}: {len(report.failed)} of "
                f"{report.probe.planned // config.k} problems failed the probe (0/{config.k})"
            )
            if report.rescue is not None:
                click.echo(_describe(report.rescue))
            for setting, spent in report.budget.items():
                click.echo(
                    f"  {setting}: {spent['rollouts']} rollouts, "
                    f"{spent['cost_tokens']:,.0f} cost tokens"
                )
            parts = [report.probe] + ([report.rescue] if report.rescue else [])
        else:
            click.echo(_describe(report))
            parts = [report]
        for part_report in parts:
            for q in part_report.quarantined:
                click.echo(
                    f"warning: corrupt shard {q.path} ({q.reason}) was moved to "
                    f"{q.moved_to}; its rollouts were sampled again now",
                    err=True,
                )
            if part_report.duplicates:
                click.echo(
                    f"warning: {part_report.duplicates} keys are in the run more than once "
                    f"(see `fixable query {config.out} ...`)",
                    err=True,
                )
    click.echo(f"run: {config.out}")
