#!/usr/bin/env bash
# The 3D regularisation sweep of `regloss` on the 4 mm model grid: the same 1000-step budget with every regulariser
# weight times M (constant schedule; `train.sh regloss 1000 mM`) and the study's reference weights and schedule
# (`train.sh regloss 1000 reference`), beside the unregularised baseline. Full resolution: scripts/brains3d/bench.sh.
# Chosen M: the smallest whose folding stays under 0.5 % in every dataset at full resolution.
set -euo pipefail
out=${1:-docs/results/sweep-3d-regscale}; B=runs/brains3d; e=epoch_0010.pt
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $B/baseline/$e $B/regloss_m2/$e $B/regloss_m4/$e $B/regloss_reference/$e \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out/model-grid"
