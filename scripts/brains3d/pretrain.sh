#!/usr/bin/env bash
# The affine stage both affine 3D variants start from (train.sh --init-from): pretraining on random affines of the
# training scans (known answer), 8000 steps of batch 2. Resumable. From the repository root.
# usage: pretrain.sh [OUT [extra pretrain options]]
#   The tried finer stage (not shipped, docs/models.md): pretrain.sh runs/brains3d/affine_pretrain_s2k64 \
#     --affine-keypoints 64 --affine-keypoint-strides 2
set -euo pipefail
out=${1:-runs/brains3d/affine_pretrain}; shift || true
exec .venv/bin/deepreg-ablation pretrain --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --steps 8000 --batch-size 2 --checkpoint-every 200 --threads 1 --resume --out "$out" "$@"
