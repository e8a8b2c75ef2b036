#!/usr/bin/env bash
# Rebuild the bundled demo model from scratch on CPU:
#   tools/train_demo.sh [WORK_DIR]     (default: build/demo-training)
# 1. generate the phantom pseudo-datasets (synthetic; seed 0, 20 cases per dataset),
# 2. train with HermesSegment/Resources/Models/demo_training.yaml (stage 1, 1800 steps),
# 3. fine-tune the stage-1 package with the same config for 1000 more steps (stage 2: a fresh
#    warm-up and poly decay; the loss was still falling steeply when stage 1's schedule ended),
# 4. fine-tune the stage-2 package for 3000 more steps at half the peak learning rate (stage 3,
#    the first with crops that reach past the body into air and shift around their target),
# 5. fine-tune that for 1200 steps at a quarter of it (stage 4),
# 6. fine-tune that for 1200 steps at lr 3e-4 with the query-consistency term (stage 5: a target's
#    logits must not depend on which other targets are asked with it),
# 7. copy the exported package next to the config and re-threshold what it offers (see the end).
# The shipped model's stages 1 and 2 ran with the sampler of commit f06d375 (crops inside the body
# crop, centred on their target); today's sampler is used for every stage when this is rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-build/demo-training}"
PY="${PYTHON:-.venv/bin/python}"
# One intra-op thread: on a shared 2-core machine two threads were 4x slower per step (measured 7.3 s vs 1.8 s).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
CONFIG=HermesSegment/Resources/Models/demo_training.yaml
if [ ! -f "$WORK/phantoms/phantom_config.yaml" ]; then
  "$PY" -m HermesSegmentLib.cli phantoms --out "$WORK/phantoms" --cases-per-dataset 20 --seed 0
fi
if [ ! -f "$WORK/run/hermes-demo.safetensors" ]; then
  "$PY" -m HermesSegmentLib.cli train "$CONFIG" --data-root "$WORK/phantoms" --out "$WORK/run" --device cpu
fi
mkdir -p "$WORK/run2" && ln -sfn ../run/cache "$WORK/run2/cache"  # reuse stage 1's preprocessed cases
"$PY" -m HermesSegmentLib.cli train "$CONFIG" --init "$WORK/run/hermes-demo.safetensors" --steps 1000 \
  --data-root "$WORK/phantoms" --out "$WORK/run2" --device cpu
mkdir -p "$WORK/run3" && ln -sfn ../run/cache "$WORK/run3/cache"
"$PY" -m HermesSegmentLib.cli train "$CONFIG" --init "$WORK/run2/hermes-demo.safetensors" --steps 3000 --lr 0.001 \
  --data-root "$WORK/phantoms" --out "$WORK/run3" --device cpu
mkdir -p "$WORK/run4" && ln -sfn ../run/cache "$WORK/run4/cache"
"$PY" -m HermesSegmentLib.cli train "$CONFIG" --init "$WORK/run3/hermes-demo.safetensors" --steps 1200 --lr 0.0005 \
  --data-root "$WORK/phantoms" --out "$WORK/run4" --device cpu
mkdir -p "$WORK/run5" && ln -sfn ../run/cache "$WORK/run5/cache"
"$PY" -m HermesSegmentLib.cli train "$CONFIG" --init "$WORK/run4/hermes-demo.safetensors" --steps 1200 --lr 0.0003 \
  --query-consistency 1 --data-root "$WORK/phantoms" --out "$WORK/run5" --device cpu
cp "$WORK/run5/hermes-demo.safetensors" HermesSegment/Resources/Models/hermes-demo.safetensors
# Nothing reached offer_min_dice 0.85, so the shipped package offers the pairs with held-out Dice >= 0.5
# (a recorded product decision, see docs/experiments.md section 1).
"$PY" tools/set_offered_targets.py HermesSegment/Resources/Models/hermes-demo.safetensors --min-dice 0.5 --version 1.2
