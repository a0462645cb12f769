#!/usr/bin/env bash
# The real-model path on a CUDA GPU that has no registry and none of the real weights
# (the lent H200: torch, transformers, accelerate, pandas... but no gguf, no duckdb, and
# 64 MiB of files in all, docs/real-models.md). About 3-5 minutes on one H200:
#   1. the gpu-marked tests: the hf backend and `fixable zoo build --real` on CUDA (bf16,
#      seeded sampling, scoring against sampling, SFT and RFT builds, checkpoints, mix),
#      and benchmarks/gpu/real_study.sh run end to end on tiny GGUF models with
#      REAL_DEVICE=cuda (build, select, study, report);
#   2. benchmarks/gpu/bench_real_shapes.py: sampling, scoring and training rates of
#      random-weight models shaped exactly like SmolLM2-135M and Gemma-3-270M, from which
#      the real study's device time is estimated.
# Wheels that the machine lacks travel in .whl/ (gguf, duckdb; see the docs for the
# pip download command) and are installed to a temporary folder first (WHEELS=DIR to take
# them from elsewhere, e.g. an empty folder where the running Python has them).
# Writes its logs and bench.json to $OUT (or ./device-check when OUT is unset).
# BENCH_ARGS adds options to the benchmark (e.g. "--tiny ..." to check this script on a CPU).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
out=${OUT:-device-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
wheels=${WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$wheels"/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)' \
  | tee -a "$out/gpu.txt"

rc=0
timeout 300 python3 -m pytest -q -p no:cacheprovider -m gpu -rs \
  tests/test_device.py tests/test_real_study.py 2>&1 | tee "$out/gpu-tests.log" || rc=1
# shellcheck disable=SC2086
timeout 240 python3 benchmarks/gpu/bench_real_shapes.py --out "$out/bench.json" ${BENCH_ARGS:-} 2>&1 \
  | grep -v -e 'it/s]' -e 's/it]' | tee "$out/bench.log" || rc=1
exit $rc
