"""Optional features and the extras that bring them.

fixable's core (the organism, the store, the analysis, the report) installs with the
package; real-model backends, the server, Ray and the math verifier need third-party
libraries that a user installs only when they use them. Each such library is named once
here with the extra that declares it in ``pyproject.toml``, so that a missing one is
reported in one line that says what to install, instead of a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from fixable.errors import FixableError

# top-level module → (extra in pyproject.toml, what needs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "transformers": ("hf", "the hf backend (transformers models)"),
    "tokenizers": ("hf", "exporting an organism to transformers"),
    "gguf": ("real", "loading GGUF model files"),
    "accelerate": ("real", "loading GGUF model files"),
    "fastapi": ("serve", "fixable serve"),
    "uvicorn": ("serve", "fixable serve"),
    "httpx": ("openai", "the openai backend (OpenAI-compatible servers)"),
    "ray": ("ray", "distributed sampling (--ray)"),
    "vllm": ("vllm", "the vllm backend"),
    "math_verify": ("bench", "checking math answers (math500)"),
    "datasets": ("datasets", "loading benchmarks from the Hugging Face Hub"),
}


class MissingExtraError(FixableError, ImportError):
    """An optional library is not installed; the message names the extra that brings it."""

    def __init__(self, module: str):
        extra, feature = EXTRAS[module]
        self.module, self.extra = module, extra
        super().__init__(
            f"{feature} needs {module!r}, which is not installed: pip install 'fixable[{extra}]'"
        )


def require(module: str) -> ModuleType:
    """Import an optional library by its top-level name, or raise ``MissingExtraError``."""
    if module not in EXTRAS:
        raise ValueError(f"{module!r} is not an optional library of fixable")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != module:
            raise  # the library is there but one of *its* dependencies is not
        raise MissingExtraError(module) from None


def as_missing_extra(error: BaseException) -> MissingExtraError | None:
    """The one-line error for an ``ImportError`` of an optional library, else ``None``.

    The CLI calls this on an ``ImportError`` that escaped a command: the libraries are
    imported lazily, deep inside the code that needs them, and this turns any of those
    imports into the same message without wrapping each one. An import that fails inside
    an installed library (a broken or mismatched installation) is not disguised as a
    missing extra: it keeps its traceback.
    """
    if isinstance(error, MissingExtraError):
        return error
    if not isinstance(error, ImportError):
        return None
    name = getattr(error, "name", None) or ""
    top = name.split(".")[0]
    if top not in EXTRAS:
        return None
    try:
        installed = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):  # a None placeholder in sys.modules
        installed = False
    return None if installed else MissingExtraError(top)
