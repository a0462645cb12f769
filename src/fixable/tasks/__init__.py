"""Tasks: problem sets with exact verifiers. Built-in tasks register themselves here."""

from fixable.registry import tasks as registry
from fixable.tasks.base import Task
from fixable.tasks.chains import ChainsTask


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task by name (``"chains"``, ``"gsm8k"`` …) with its options."""
    return registry.create(name, **kwargs)


__all__ = ["ChainsTask", "Task", "get_task", "registry"]
