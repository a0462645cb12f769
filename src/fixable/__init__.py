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
