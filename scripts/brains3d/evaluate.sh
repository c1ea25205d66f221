#!/usr/bin/env bash
# The 3D ablation on the saved validation pairs (4 mm model grid): the four shipped variants (13000 steps each, two
# U-Net passes: the 8000-step files trained 5000 steps more, the last 1000 annealed, each file the average of its run's
# last ten checkpoints, scripts/brains3d/ship.sh; regularised ones in the tuned setting M = 8) and, for what the 5000
# more steps bought, the four 8000-step files they started from (shipped before, commit 85b3c8e:
# runs/brains3d/shipped-cascade-8000/<variant>.pt, "ship.sh 8000"). Paired Wilcoxon tests against the shipped baseline,
# and the report's "What each component buys" section: the four contrasts of the 2 x 2 design among the shipped files.
# What the second U-Net pass bought (the single-pass files trained the same way): docs/results/distill-3d
# (distill_eval.sh cascade).
# The equal-budget comparison of the two regularisation strengths at 3000 steps (the reference arm) is in the git
# history of docs/results/ablation-3d (commit dac0e44; ship.sh comparison; its runs are not kept).
# usage: evaluate.sh OUT
set -euo pipefail
out=$1; P=runs/brains3d/shipped-cascade-8000; M=DeepRegAblation/Resources/Models/3d
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $M/baseline.pt $M/regloss.pt $M/affine_basic.pt $M/affine_enhanced.pt \
               $P/baseline.pt $P/regloss.pt $P/affine_basic.pt $P/affine_enhanced.pt \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
