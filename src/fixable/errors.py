"""Errors meant for users: the CLI prints them in one line, without a traceback.

Each message says what went wrong and, where there is one, the command or value that fixes it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FixableError(Exception):
    """Base class of every error fixable shows to a user as a one-line message."""


class UnknownNameError(FixableError, KeyError):
    """A model, task, backend or intervention name that is not registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        close = difflib.get_close_matches(self.name, self.known, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return (
            f"Unknown {self.kind} {self.name!r}.{hint} Known: {', '.join(self.known) or '(none)'}."
        )


class ConfigError(FixableError, ValueError):
    """A configuration value out of range or malformed; the message names the field."""


class CapabilityError(FixableError):
    """A backend asked to do something it cannot do (e.g. an intervention it does not support)."""


class StoreError(FixableError):
    """A run directory that cannot be read or written as asked."""


class DataError(FixableError, ValueError):
    """A data file that cannot be parsed; the message names the file, line and field."""
