"""The ``fixable`` command: a thin shell over the public Python API.

Each subcommand lives in its own module under ``fixable.cli`` and is imported only when
it runs, so ``fixable --help`` stays fast. Errors meant for users print in one line.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from fixable.errors import FixableError
from fixable.extras import as_missing_extra

# subcommand → module in fixable.cli holding a click command named ``command``
COMMANDS = {
    "zoo": "zoo",
    "sample": "sample",
    "runs": "runs",
    "query": "query",
    "export": "export",
    "serve": "serve",
    "report": "report",
    "demo": "demo",
    "analyze": "analyze",
    "rescue": "rescue",
    "list": "listing",
    "label": "label",
    "real": "real",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        return importlib.import_module(f"fixable.cli.{COMMANDS[name]}").command

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError:
            from fixable.cli.listing import WHAT

            if args and args[0] in WHAT:  # `fixable tasks` and the like
                raise click.UsageError(
                    f"No such command {args[0]!r}. Did you mean: fixable list {args[0]}?", ctx
                ) from None
            raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="fixable")
def cli(verbose: int) -> None:
    """fixable: tell which failures of a reasoning model are fixable, and by what."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="fixable", standalone_mode=False)
    except FixableError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except ImportError as e:
        missing = as_missing_extra(e)  # an optional library, imported where it is needed
        if missing is None:
            raise
        click.echo(f"error: {missing}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
