#!/usr/bin/env bash
# Rebuild the bundled demo model from scratch on CPU:
#   tools/train_demo.sh [WORK_DIR]     (default: build/demo-training)
# 1. generate the phantom pseudo-datasets (synthetic; seed 0, 20 cases per dataset),
# 2. train with HermesSegment/Resources/Models/demo_training.yaml,
# 3. copy the exported package next to the config.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-build/demo-training}"
PY="${PYTHON:-.venv/bin/python}"
# One intra-op thread: on a shared 2-core machine two threads were 4x slower per step (measured 7.3 s vs 1.8 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
if [ ! -f "$WORK/phantoms/phantom_config.yaml" ]; then
  "$PY" -m HermesSegmentLib.cli phantoms --out "$WORK/phantoms" --cases-per-dataset 20 --seed 0
fi
"$PY" -m HermesSegmentLib.cli train HermesSegment/Resources/Models/demo_training.yaml \
  --data-root "$WORK/phantoms" --out "$WORK/run" --device cpu
cp "$WORK/run/hermes-demo.safetensors" HermesSegment/Resources/Models/hermes-demo.safetensors
