#!/usr/bin/env bash
# 3D brain models (the shipped 3D files): one variant per call, from the repository root, resumable
# (run it again to continue a killed or stopped run from its last.pt).
# usage: train.sh VARIANT [STEPS] [REG]
#   REG (regularised variants only): empty = the shipped setting (constant schedule, M = 2) in
#   runs/brains3d/VARIANT; "reference" = the study's weights and schedule in runs/brains3d/VARIANT_reference;
#   "mN" = constant schedule, every regulariser weight times N, in runs/brains3d/VARIANT_mN (the 3D sweep).
set -euo pipefail
variant=$1; steps=${2:-20000}; reg=${3:-}
out="runs/brains3d/$variant${reg:+_$reg}"
common=(--data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json
        --steps "$steps" --steps-per-epoch 100 --checkpoint-every 1 --seg-weight 1 --threads 1 --rotation-deg 5
        --no-progress --no-tensorboard --resume --out "$out")
extra=()
case $variant in
  regloss|affine_enhanced)
    case $reg in
      "") extra+=(--schedule constant --reg-scale 2) ;;
      reference) extra+=(--schedule reference) ;;
      m*) extra+=(--schedule constant --reg-scale "${reg#m}") ;;
      *) echo "REG must be empty, reference or mN, not '$reg'" >&2; exit 2 ;;
    esac ;;
  *) [ -z "$reg" ] || { echo "$variant has no regularisers: no REG" >&2; exit 2; } ;;
esac
case $variant in
  affine_basic|affine_enhanced)  # the stage of scripts/brains3d/pretrain.sh, also trained on its own loss
    extra+=(--init-from runs/brains3d/affine_pretrain_s2k64/last.pt --affine-keypoints 64 --affine-keypoint-strides 2
            --affine-passes 2 --affine-weight 1) ;;
esac
exec .venv/bin/deepreg-ablation train --variant "$variant" "${common[@]}" "${extra[@]}"
