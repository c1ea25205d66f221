#!/usr/bin/env bash
# The regulariser strength at the shipped 2000-step budget: M = 4 (shipped) against M = 8 (every regulariser weight
# times 8, constant schedule; `train.sh regloss 2000 m8`, `train.sh affine_enhanced 2000 m8`), beside the unregularised
# baseline and the reference arm of the same budget. Model grid (16 pairs) and full resolution (17 pairs, ANTs affine
# beside; `--peers` without names: no elastix or FireANTs). The 1000-step sweep that chose M = 4: sweep.sh.
# usage: sweep2k.sh [OUT]
set -euo pipefail
out=${1:-docs/results/sweep-3d-regscale/steps-2000}; B=runs/brains3d; e=epoch_0020.pt
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $B/baseline/$e $B/regloss_m4/$e $B/regloss_m8/$e $B/regloss_reference_2k/$e \
               $B/affine_enhanced_m4/$e $B/affine_enhanced_m8/$e \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out/model-grid"
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical affine --peers \
  --init-align auto --threads 1 \
  --variants "regloss_m4=$B/regloss_m4/$e,regloss_m8=$B/regloss_m8/$e,affine_enhanced_m4=$B/affine_enhanced_m4/$e,affine_enhanced_m8=$B/affine_enhanced_m8/$e" \
  --report "$out/full-resolution.md"
