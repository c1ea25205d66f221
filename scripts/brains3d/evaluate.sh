#!/usr/bin/env bash
# The 3D ablation on the saved validation pairs (4 mm model grid): the four shipped variants after the same 4000 steps
# (regularised ones in the shipped, tuned setting M = 8), and the equal-budget comparison of the two regularisation
# strengths at 3000 steps: the tuned runs' step-3000 checkpoints beside the reference arm (the study's weights and
# schedule over 3000 steps: OUT=runs/brains3d/<variant>_reference_3k scripts/brains3d/train.sh <variant> 3000 reference).
# usage: evaluate.sh OUT
set -euo pipefail
out=$1; B=runs/brains3d; e=epoch_0040.pt; e3=epoch_0030.pt
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $B/baseline/$e $B/regloss_m8/$e $B/affine_basic/$e $B/affine_enhanced_m8/$e \
               $B/regloss_m8/$e3 $B/regloss_reference_3k/$e3 $B/affine_enhanced_m8/$e3 $B/affine_enhanced_reference_3k/$e3 \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
