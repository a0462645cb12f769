"""Provenance: what a run records about where its rollouts came from — the policy's
identity with the sha256 of its weights files, the git revision of the source, the
package versions, Python and platform. ``fixable.sampling`` writes it into the manifest
with every call; ``store.Run.register_model`` refuses to mix rollouts of other weights.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from fixable.backends.base import Backend

PACKAGES = (
    "fixable",
    "torch",
    "numpy",
    "pyarrow",
    "duckdb",
    "safetensors",
    "transformers",
    "tokenizers",
    "vllm",
    "httpx",
    "scikit-learn",
    "math-verify",
)

_HASHES: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256, per process


def weights_sha256(directory: str | Path) -> dict[str, str]:
    """sha256 of every weights and config file of a model directory, by file name.

    Hashes are remembered per process by path, size and modification time: a sweep
    registers its model twice, and multi-gigabyte weights take seconds to hash.
    """
    directory = Path(directory)
    patterns = ("*.safetensors", "*.bin", "*.pt", "*.gguf", "config.json", "tokenizer*.json")
    out = {}
    for pattern in patterns:
        for path in sorted(directory.glob(pattern)):
            stat = path.stat()
            memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
            if memo not in _HASHES:
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                _HASHES[memo] = h.hexdigest()
            out[path.name] = _HASHES[memo]
    return out


def _model_directory(name: str) -> Path | None:
    path = Path(name)
    if path.is_dir():
        return path
    try:
        from fixable.organism import zoo
    except ImportError:
        return None
    try:
        return Path(zoo.resolve(name))
    except Exception:  # not a zoo name: a served model id, or a Hub id
        return None


def model_identity(backend: Backend) -> dict:
    """The policy's name, backend and, where its files are reachable, their sha256.

    A backend may add its own fields through an optional ``identity()`` method (served
    model revisions, reference and checkpoint paths, …).
    """
    identity: dict[str, Any] = {"name": backend.model_name, "backend": backend.name}
    directory = _model_directory(backend.model_name)
    if directory is not None:
        identity["path"] = str(directory.resolve())
        identity["weights_sha256"] = weights_sha256(directory)
    hook = getattr(backend, "identity", None)
    if callable(hook):
        identity.update(hook())
    return identity


def git_revision() -> dict:
    """The source tree's git revision and whether it has uncommitted changes."""
    source = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if rev.returncode != 0:
            return {"revision": None}
        dirty = subprocess.run(
            ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"revision": rev.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"revision": None}


def environment() -> dict:
    """Git revision, package versions, Python and platform: what the manifest records."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return {
        "git": git_revision(),
        "packages": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
    }
