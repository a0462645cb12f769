"""``fixable list``: what this installation can do, one line per entry, plug-ins included."""

from __future__ import annotations

import click

WHAT = ("tasks", "backends", "interventions", "models")


def _summary(obj) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0].rstrip(".") if doc else ""


def list_lines(what: str) -> list[str]:
    """The lines ``fixable list WHAT`` prints (a function, so the Python API can use it)."""
    from fixable.registry import backends, tasks

    if what == "tasks":
        return [
            f"{name:<12} {_summary(tasks.get(name))}  [{tasks.origin(name)}]"
            for name in tasks.names()
        ]
    if what == "backends":
        lines = []
        for name in backends.names():
            caps = sorted(getattr(backends.get(name), "capabilities", ()))
            lines.append(f"{name:<12} {', '.join(caps)}  [{backends.origin(name)}]")
        return lines
    if what == "interventions":
        from fixable.interventions import KINDS

        lines = []
        for kind in KINDS.values():
            spec = kind.name if kind.param is None else f"{kind.name}({kind.param}=…)"
            if kind.bounds is not None:
                spec += f" {kind.param} in {kind.interval()}"
            lines.append(f"{spec:<32} {kind.what}; costs {kind.cost_factor:g}× per token")
        return lines
    from fixable.organism import zoo

    lines = []
    for name in zoo.list_models():
        try:
            card = zoo.card(name)
        except (KeyError, FileNotFoundError):
            lines.append(f"{name:<20} (no card yet: its build has not finished)")
            continue
        reference = card.get("reference") or zoo.reference_of(name) or "-"
        lines.append(
            f"{name:<20} family={card.get('family', '?')} method={card.get('method', '?')} "
            f"seed={card.get('seed', '?')} reference={reference}"
        )
    return lines or ["The zoo is empty: build it with `fixable zoo build`."]


@click.command("list")
@click.argument("what", type=click.Choice(WHAT))
def command(what: str) -> None:
    """List the tasks, backends, interventions or zoo models this installation has.

    \b
    fixable list tasks           # built-in tasks and plug-ins (entry point fixable.tasks)
    fixable list backends        # with their capabilities
    fixable list interventions   # kinds, parameter bounds and cost per token
    fixable list models          # the zoo (details: fixable zoo list)
    """
    for line in list_lines(what):
        click.echo(line)
