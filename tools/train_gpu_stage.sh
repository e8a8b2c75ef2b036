#!/usr/bin/env bash
# One training stage of the bundled demo model on a GPU, fitted into a wall-clock budget.
#
# A GPU server may have PyTorch but not SimpleITK (nor MONAI), so the data is preprocessed here
# first, with the same code training uses, into a small folder that travels with the checkout:
#
#   1. here (CPU, this repository's .venv):
#        tools/train_gpu_stage.sh prepare HN_FOLDER [PACKED_DIR] [PHANTOMS_PER_DATASET] [INIT_PACKAGE]
#      HN_FOLDER: the OpenKBP head-and-neck dataset in nnU-Net layout with dataset.json and
#      cases.json (../shared/data/Dataset901_OpenKBP_HN). PACKED_DIR (default gpu-stage/, ignored
#      by git) receives data/ (the demo config's training cases in model space: domain-randomised
#      phantoms generated with seed 0 at randomisation 0.5 -- RANDOMIZATION=1 in the environment
#      for the stronger one, docs/experiments.md 6k -- and OpenKBP's train-pats only: its
#      validation patients are never packed), wheels/ (MONAI and jsonschema with their
#      dependencies, for Python 3.12) and, when INIT_PACKAGE is given, init.safetensors (the
#      package to continue from; default: the bundled model). About 40 MB with 10 phantoms per
#      dataset, 49 MB with a package.
#   2. on the GPU machine, from the repository root:
#        tools/train_gpu_stage.sh train [PACKED_DIR] OUT_DIR SECONDS [INIT_PACKAGE] [EXTRA TRAIN FLAGS...]
#      installs the wheels into a scratch folder, then trains the demo config on cuda (bf16 autocast)
#      from INIT_PACKAGE (default: PACKED_DIR/init.safetensors, else the bundled model), batch 32,
#      14 batch-making worker processes,
#      peak lr 2e-3, stopping in time to validate and export within SECONDS (from the start of
#      training). OUT_DIR receives hermes-demo.safetensors (EMA weights, manifest with the
#      held-out Dice of the training patients), train_log.csv, validation.json and train.log.
#      The 35 MB checkpoint is not kept (the machine is given back anyway).
#   CONFIG=FILE (environment) trains another config on the same data, e.g. one whose `model` grows
#   the init package's network (deeper, or a multiple of its width: README, "Training").
#
# Example with the device tool (the lead's machine; gpu-stage/ carried):
#   tools/train_gpu_stage.sh prepare ../shared/data/Dataset901_OpenKBP_HN
#   run: tools/train_gpu_stage.sh train gpu-stage "$OUT" 420     (timeout_s 560, carry ["gpu-stage"])
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG="${CONFIG:-HermesSegment/Resources/Models/demo_training.yaml}"
action="${1:-}"
shift || true

if [ "$action" = prepare ]; then
  HN="$(cd "${1:?HN_FOLDER}" && pwd)"
  PACKED="${2:-gpu-stage}"
  PER_DATASET="${3:-10}"
  INIT_PACKAGE="${4:-}"
  PY="${PYTHON:-.venv/bin/python}"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  mkdir -p "$PACKED"
  "$PY" -m HermesSegmentLib.cli phantoms --out "$scratch/raw" --cases-per-dataset "$PER_DATASET" --seed 0 \
    --randomization "${RANDOMIZATION:-0.5}"
  ln -s "$HN" "$scratch/raw/Dataset901_OpenKBP_HN"
  rm -rf "$PACKED/data"
  "$PY" -m HermesSegmentLib.cli train "$CONFIG" --data-root "$scratch/raw" --out "$scratch/run" --prepare "$PACKED/data"
  rm -rf "$PACKED/wheels"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$PACKED/wheels" monai==1.6.1 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 \
    referencing==0.37.0 rpds-py==2026.9.1
  rm -f "$PACKED/init.safetensors"
  [ -n "$INIT_PACKAGE" ] && cp "$INIT_PACKAGE" "$PACKED/init.safetensors"
  du -sh "$PACKED"
  exit 0
fi

if [ "$action" = train ]; then
  if [ $# -ge 3 ] && [ -d "$1/data" ]; then PACKED="$1"; shift; else PACKED=gpu-stage; fi
  OUT_DIR="${1:?OUT_DIR}"
  SECONDS_BUDGET="${2:?SECONDS}"
  DEFAULT_INIT=HermesSegment/Resources/Models/hermes-demo.safetensors
  [ -f "$PACKED/init.safetensors" ] && DEFAULT_INIT="$PACKED/init.safetensors"
  INIT="${3:-$DEFAULT_INIT}"
  shift 3 || shift $#
  PY="${PYTHON:-python3}"
  site="$(mktemp -d)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$PACKED"/wheels/*.whl
  export PYTHONPATH="$PWD/HermesSegment:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  run="$(mktemp -d)"
  trap 'rm -rf "$site" "$run"' EXIT
  mkdir -p "$OUT_DIR"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
  status=0
  "$PY" -m HermesSegmentLib.cli train "$CONFIG" --init "$INIT" --data-root "$PACKED/data" --out "$run" \
    --device cuda --time-limit "$SECONDS_BUDGET" --batch-size 32 --workers 14 --lr 0.002 --steps 100000 \
    --checkpoint-every 500 "$@" 2>&1 | tr '\r' '\n' | grep -v '^train: ' | tee "$OUT_DIR/train.log" || status=$?
  tail -n 3 "$run/train_log.csv" 2>/dev/null || true
  for file in hermes-demo.safetensors train_log.csv validation.json; do
    [ -f "$run/$file" ] && cp "$run/$file" "$OUT_DIR/"
  done
  exit "$status"
fi

echo "usage: $0 prepare HN_FOLDER [PACKED_DIR] [PHANTOMS_PER_DATASET] | train [PACKED_DIR] OUT_DIR SECONDS [INIT_PACKAGE] [FLAGS...]" >&2
exit 2
