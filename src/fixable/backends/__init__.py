"""Backends: engines that sample and score. Built-in ones register themselves on import."""

# real-model backends register on import; they import transformers / vllm / httpx only
# when a backend is built
from fixable.backends import hf, openai, organism, vllm  # noqa: F401
from fixable.backends.base import Backend, Generation, GenerationRequest, check_capabilities
from fixable.registry import backends as registry

__all__ = ["Backend", "Generation", "GenerationRequest", "check_capabilities", "registry"]
