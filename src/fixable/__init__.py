"""fixable: tell which failures of a reasoning model are fixable, and by what.

The public API is what this module re-exports; the ``fixable`` command calls the same
functions. The verbs follow the pipeline::

    import fixable
    run = fixable.sweep(...)                 # probe, then rescue every failure (sampling)
    result = fixable.analyze([run.path])     # labels, regimes, routing, topography
    fixable.build_report(run.path, out)      # the HTML report
    fixable.run_demo(out="runs/demo")        # all of it on the shipped zoo

Heavy modules (torch, scikit-learn, matplotlib) are imported on first use of the verb that
needs them, so ``import fixable`` stays light.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from fixable.errors import FixableError
from fixable.interventions import Intervention, parse_grid
from fixable.tasks import Task, get_task
from fixable.types import Problem, Verdict, rollout_seed

try:
    __version__ = _version("fixable")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0.0.0+unknown"

# verb → module that defines it, imported on first use
_LAZY = {
    "sample": "fixable.sampling",
    "sweep": "fixable.protocol",
    "Run": "fixable.store",
    "analyze": "fixable.analysis",
    "rescue": "fixable.analysis",
    "build_report": "fixable.report.build",
    "run_demo": "fixable.demo",
}

__all__ = [
    "FixableError",
    "Intervention",
    "Problem",
    "Task",
    "Verdict",
    "get_task",
    "parse_grid",
    "rollout_seed",
    "__version__",
    *_LAZY,
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'fixable' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
