#!/usr/bin/env bash
# 3D brain models (the shipped 3D files): one variant per call, from the repository root, resumable
# (run it again to continue a killed or stopped run from runs/brains3d/<variant>/last.pt).
# usage: train.sh VARIANT [STEPS]
set -euo pipefail
variant=$1; steps=${2:-20000}
common=(--data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json
        --steps "$steps" --steps-per-epoch 100 --checkpoint-every 1 --seg-weight 1 --threads 1 --rotation-deg 5
        --no-progress --no-tensorboard --resume --out "runs/brains3d/$variant")
extra=()
case $variant in
  regloss|affine_enhanced) extra+=(--schedule constant --reg-scale 2) ;;
esac
case $variant in
  affine_basic|affine_enhanced) extra+=(--init-from runs/brains3d/affine_pretrain/last.pt --affine-passes 2) ;;
esac
exec .venv/bin/deepreg-ablation train --variant "$variant" "${common[@]}" "${extra[@]}"
