#!/usr/bin/env bash
# The 3D ablation on the saved validation pairs (4 mm model grid): the four shipped variants (8000 steps each, two U-Net
# passes: the 5000-step files trained 3000 steps more as a two-pass cascade, the last 1000 annealed, each file the
# average of its run's last ten checkpoints, scripts/brains3d/ship.sh; regularised ones in the tuned setting M = 8) and,
# for what the second pass bought, the four single-pass files trained the same way from the same start (the files
# shipped before, commit a259c12: runs/brains3d/distill/<variant>_plain/average_21-30.pt, "ship.sh plain"). Paired
# Wilcoxon tests against the shipped baseline, and the report's "What each component buys" section: the four contrasts
# of the 2 x 2 design among the shipped files. What the 3000 single-pass steps bought over the 5000-step files:
# docs/results/distill-3d (distill_eval.sh grid).
# The equal-budget comparison of the two regularisation strengths at 3000 steps (the reference arm) is in the git
# history of docs/results/ablation-3d (commit dac0e44; ship.sh comparison; its runs are not kept).
# usage: evaluate.sh OUT
set -euo pipefail
out=$1; P=runs/brains3d/distill; M=DeepRegAblation/Resources/Models/3d
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $M/baseline.pt $M/regloss.pt $M/affine_basic.pt $M/affine_enhanced.pt \
               $P/baseline_plain/average_21-30.pt $P/regloss_plain/average_21-30.pt \
               $P/affine_basic_plain/average_21-30.pt $P/affine_enhanced_plain/average_21-30.pt \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out"
