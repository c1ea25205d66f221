#!/usr/bin/env bash
# The 3D ablation on the saved validation pairs (4 mm model grid): the four shipped variants (5000 steps each, the
# last 1000 annealed, each file the average of its run's last ten checkpoints, scripts/brains3d/ship.sh; regularised
# ones in the shipped, tuned setting M = 8), and the equal-budget comparison of the two regularisation strengths at
# 3000 steps: the tuned runs and the reference arm (the study's weights and schedule over 3000 steps:
# OUT=runs/brains3d/<variant>_reference_3k scripts/brains3d/train.sh <variant> 3000 reference), each averaged over
# steps 2100-3000 (scripts/brains3d/ship.sh comparison).
# usage: evaluate.sh OUT
set -euo pipefail
out=$1; B=runs/brains3d; M=DeepRegAblation/Resources/Models/3d; a=average_21-30.pt
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $M/baseline.pt $M/regloss.pt $M/affine_basic.pt $M/affine_enhanced.pt \
               $B/regloss_m8/$a $B/regloss_reference_3k/$a $B/affine_enhanced_m8/$a $B/affine_enhanced_reference_3k/$a \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
