"""fixable: tell which failures of a reasoning model are fixable, and by what.

The public API is what this module re-exports; the ``fixable`` command calls the same
functions.
"""

from fixable.errors import FixableError
from fixable.interventions import Intervention, parse_grid
from fixable.tasks import Task, get_task
from fixable.types import Problem, Verdict, rollout_seed

__version__ = "0.1.0"

__all__ = [
    "FixableError",
    "Intervention",
    "Problem",
    "Task",
    "Verdict",
    "get_task",
    "parse_grid",
    "rollout_seed",
]

# the analysis pulls in scikit-learn: imported on first use, so `import fixable` stays light
_LAZY = {"analyze": "fixable.analysis", "rescue": "fixable.analysis"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fixable' has no attribute {name!r}")
