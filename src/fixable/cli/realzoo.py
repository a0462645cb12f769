"""``fixable zoo build --real`` / ``fixable zoo list --real``: the real-model variants."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click


def list_real(as_json: bool) -> None:
    from fixable import realzoo

    names = realzoo.built()
    if not names:
        recipes = ", ".join(realzoo.RECIPES)
        click.echo(
            f"No real model is built under {realzoo.zoo_dir()}: build them with "
            f"`fixable zoo build --real` (recipes: {recipes})."
        )
        return
    cards = {name: realzoo.card(name) for name in names}
    if as_json:
        click.echo(json.dumps(cards, indent=1, sort_keys=True))
        return
    for name, data in cards.items():
        click.echo(realzoo.format_card(name, data) + "\n")


def build_real(
    names,
    *,
    threads: int,
    zoo_dir: str | None,
    force: bool,
    device: str = "auto",
    recipes_file: str | None = None,
) -> None:
    import torch
    from tqdm import tqdm

    from fixable import realzoo

    torch.set_num_threads(threads)
    bars: dict[str, tqdm] = {}

    def progress(name: str, done: int, total: int) -> None:
        bar = bars.get(name)
        if bar is None:
            bar = bars[name] = tqdm(total=total, desc=name, dynamic_ncols=True, mininterval=2.0)
        bar.n = done
        bar.refresh()
        if done >= total:
            bars.pop(name).close()

    t0 = time.time()
    root = Path(zoo_dir) if zoo_dir else None
    recipes = realzoo.load_recipes(recipes_file) if recipes_file else None
    built = realzoo.build(
        list(names) or None,
        root,
        force=force,
        progress=progress,
        device=device,
        recipes=recipes,
    )
    for name in built:
        click.echo(realzoo.format_card(name, realzoo.card(name, root)))
    click.echo(f"built {len(built)} real model(s) in {time.time() - t0:.0f}s")
