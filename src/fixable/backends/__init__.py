"""Backends: engines that sample and score. Built-in ones register themselves on import."""

from fixable.backends.base import Backend, Generation, GenerationRequest, check_capabilities
from fixable.registry import backends as registry

# real-model backends: their modules import transformers / vllm / httpx only when built
from fixable.backends import hf, openai  # noqa: E402,F401  (registration)

__all__ = ["Backend", "Generation", "GenerationRequest", "check_capabilities", "registry"]
