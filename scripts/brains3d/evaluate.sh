#!/usr/bin/env bash
# The 3D ablation on the saved validation pairs (4 mm model grid): the four shipped variants (8000 steps each: the
# 5000-step files continued 3000 steps, the last 1000 annealed, each file the average of its run's last ten
# checkpoints, scripts/brains3d/ship.sh; regularised ones in the tuned setting M = 8) and, for what the 3000 more
# steps bought, the four 5000-step files they started from (runs/brains3d/shipped-5000, the files of commit e371607,
# put there by distill.sh). Paired Wilcoxon tests against the shipped baseline, and the report's "What each component
# buys" section: the four contrasts of the 2 x 2 design among the shipped files.
# The equal-budget comparison of the two regularisation strengths at 3000 steps (the reference arm) is in the git
# history of docs/results/ablation-3d (commit dac0e44; ship.sh comparison; its runs are not kept).
# usage: evaluate.sh OUT
set -euo pipefail
out=$1; S=runs/brains3d/shipped-5000; M=DeepRegAblation/Resources/Models/3d
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $M/baseline.pt $M/regloss.pt $M/affine_basic.pt $M/affine_enhanced.pt \
               $S/baseline.pt $S/regloss.pt $S/affine_basic.pt $S/affine_enhanced.pt \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
