#!/usr/bin/env bash
# The affine stage both affine 3D variants start from: pretraining on random affines of the training
# scans (known answer), 64 keypoints on stride-4 heat maps. Resumable (--resume). From the repository root.
# usage: pretrain.sh [STEPS]
set -euo pipefail
exec .venv/bin/deepreg-ablation pretrain --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --steps "${1:-8000}" --threads 1 --affine-keypoints 64 --affine-keypoint-strides 2 --resume --out runs/brains3d/affine_pretrain_s2k64
