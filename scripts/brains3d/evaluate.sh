#!/usr/bin/env bash
# Evaluate the four 3D variants at the same step on the saved validation pairs (model grid, 4 mm).
# usage: evaluate.sh N OUT   (epoch_000N.pt = the checkpoint after N x 100 steps)
set -euo pipefail
e=$(printf "%04d" "$1"); out=$2
.venv/bin/deepreg-ablation evaluate \
  --checkpoint runs/brains3d/baseline/epoch_$e.pt runs/brains3d/regloss/epoch_$e.pt \
               runs/brains3d/affine_basic/epoch_$e.pt runs/brains3d/affine_enhanced/epoch_$e.pt \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
