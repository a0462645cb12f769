"""Tasks: problem sets with exact verifiers. Built-in tasks register themselves here."""

from fixable.registry import tasks as registry
from fixable.tasks.base import Task
from fixable.tasks.chains import ChainsTask
from fixable.tasks.cruxeval import CRUXEvalTask
from fixable.tasks.gpqa import GPQATask
from fixable.tasks.gsm8k import GSM8KTask
from fixable.tasks.humaneval import HumanEvalTask
from fixable.tasks.jsonl import JsonlTask
from fixable.tasks.math500 import MATH500Task
from fixable.tasks.planted import PlantedChainsTask


def get_task(name: str, **kwargs) -> Task:
    """Build a registered task by name (``"chains"``, ``"gsm8k"`` …) with its options."""
    return registry.create(name, **kwargs)


__all__ = [
    "CRUXEvalTask",
    "ChainsTask",
    "GPQATask",
    "GSM8KTask",
    "HumanEvalTask",
    "JsonlTask",
    "MATH500Task",
    "PlantedChainsTask",
    "Task",
    "get_task",
    "registry",
]
