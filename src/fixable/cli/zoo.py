"""``fixable zoo``: build, list and export the organism model zoo."""

from __future__ import annotations

import json

import click


@click.group("zoo")
def command() -> None:
    """The built-in organism models: build them, read their cards, export them."""


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the cards as JSON.")
@click.option("--markdown", is_flag=True, help="Print one table row per model (Markdown).")
@click.option("--micro", is_flag=True, help="Also list the rebuild-check micro model.")
@click.option("--real", is_flag=True, help="List the built real-model variants instead.")
def list_command(as_json: bool, markdown: bool, micro: bool, real: bool) -> None:
    """Print a model card per zoo model."""
    if real:
        from fixable.cli.realzoo import list_real

        list_real(as_json)
        return
    from fixable.organism import zoo
    from fixable.organism.cards import format_card, markdown_table

    names = zoo.list_models(include_micro=micro)
    if not names:
        click.echo("The zoo is empty: build it with `fixable zoo build`.")
        return
    cards = {}
    for name in names:
        try:
            cards[name] = zoo.card(name)
        except KeyError:
            cards[name] = None  # still training: weights of a checkpoint but no card yet
    if as_json:
        click.echo(json.dumps(cards, indent=1, sort_keys=True))
        return
    if markdown:
        click.echo(markdown_table({n: c for n, c in cards.items() if c is not None}))
        return
    for name, model_card in cards.items():
        if model_card is None:
            click.echo(f"{name}  (no card yet: its build has not finished)\n")
        else:
            click.echo(format_card(name, model_card) + "\n")


@command.command("build")
@click.argument("names", nargs=-1)
@click.option(
    "--device",
    default=None,
    help="Torch device to train on (default: cpu; with --real, auto: a CUDA GPU when torch "
    "sees one, else the CPU).",
)
@click.option(
    "--threads",
    type=int,
    default=2,
    show_default=True,
    help="CPU threads for torch (the zoo is sized for a 2-core laptop).",
)
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Resume state and sample pools (default ~/.cache/fixable/zoo-build).",
)
@click.option(
    "--zoo-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where the built models go (default: the package's zoo directory).",
)
@click.option("--force", is_flag=True, help="Rebuild models that are already built.")
@click.option("--micro", is_flag=True, help="Build only the rebuild-check micro model.")
@click.option(
    "--real",
    is_flag=True,
    help="Build post-trained variants of the real models instead (fixable.realzoo).",
)
@click.option(
    "--planted",
    is_flag=True,
    help="Build the planted testbed's dose series (both families; names restrict it).",
)
@click.option(
    "--recipes",
    "recipes_file",
    type=click.Path(dir_okay=False),
    default=None,
    help="With --real: a TOML file of [recipes.NAME] tables (fields of fixable.realzoo."
    "RealRecipe) to build instead of the shipped recipes.",
)
def build_command(
    names, device, threads, work_dir, zoo_dir, force, micro, real, planted, recipes_file
) -> None:
    """Rebuild zoo models from their recipes (default: every model of the natural zoo;
    finished ones are skipped)."""
    if real and planted:
        from fixable.errors import ConfigError

        raise ConfigError("--real and --planted build different zoos: give one of them")
    if real:
        from fixable.cli.realzoo import build_real

        build_real(
            names,
            threads=threads,
            zoo_dir=zoo_dir,
            force=force,
            device=device or "auto",
            recipes_file=recipes_file,
        )
        return
    if recipes_file:
        from fixable.errors import ConfigError

        raise ConfigError("--recipes is for --real builds: add --real")
    device = device or "cpu"
    import time
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from fixable.organism import zoo

    torch.set_num_threads(threads)
    bars: dict[str, tqdm] = {}

    def progress(name: str, total: int):
        bar = tqdm(total=total, desc=name, unit="step", dynamic_ncols=True, mininterval=2.0)
        bars[name] = bar

        def update(step: int, steps: int, metrics: dict) -> None:
            bar.n = step
            shown = {
                k: v
                for k, v in metrics.items()
                if k in ("loss", "seq_acc", "acc", "reward", "entropy", "kl", "sampled")
            }
            bar.set_postfix({k: f"{v:.3f}" for k, v in shown.items()}, refresh=False)
            bar.refresh()

        return update

    def on_done(name: str, model_card: dict) -> None:
        bars.pop(name).close()
        by_d = model_card["greedy_by_difficulty"]
        click.echo(
            f"{name}: built in {model_card['build_seconds']:.0f}s; greedy by difficulty "
            + " ".join(f"d{d}={100 * v:.0f}%" for d, v in by_d.items())
            + f"; mean entropy {model_card['mean_entropy']:.3f}"
        )

    t0 = time.time()
    wanted = [zoo.MICRO] if micro else (list(names) or None)
    built = zoo.build(
        wanted,
        zoo_dir=Path(zoo_dir) if zoo_dir else None,
        work_dir=Path(work_dir) if work_dir else None,
        device=device,
        force=force,
        planted=planted,
        progress=progress,
        on_done=on_done,
    )
    click.echo(f"built {len(built)} model(s) in {time.time() - t0:.0f}s")


@command.command("export")
@click.argument("name")
@click.argument("out", type=click.Path(file_okay=False))
def export_command(name: str, out: str) -> None:
    """Export a llama-family zoo model to a Hugging Face LlamaForCausalLM directory."""
    from fixable.organism import zoo
    from fixable.organism.export_hf import export_llama

    path = export_llama(zoo.resolve(name), out)
    click.echo(f"exported {name} to {path}")
