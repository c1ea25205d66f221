#!/usr/bin/env bash
# The 3D ablation on the saved validation pairs (4 mm model grid): the four variants after the same 1000 steps
# (regularised ones in the shipped, tuned setting M = 4) and the reference arm (the study's weights and schedule).
# usage: evaluate.sh OUT
set -euo pipefail
out=$1; B=runs/brains3d; e=epoch_0010.pt
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $B/baseline/$e $B/regloss_m4/$e $B/affine_basic/$e $B/affine_enhanced_m4/$e \
               $B/regloss_reference/$e $B/affine_enhanced_reference/$e \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
