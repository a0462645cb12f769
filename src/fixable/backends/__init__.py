"""Backends: engines that sample and score. Built-in ones register themselves on import."""

from fixable.backends.base import Backend, Generation, GenerationRequest, check_capabilities
from fixable.registry import backends as registry

__all__ = ["Backend", "Generation", "GenerationRequest", "check_capabilities", "registry"]
