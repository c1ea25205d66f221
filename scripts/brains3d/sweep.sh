#!/usr/bin/env bash
# The 3D regularisation sweep of the shipped `regloss`: the same 1000-step budget with every regulariser
# weight times M (constant schedule; runs of `train.sh regloss 1000 mM`, M = 2 is the run of `train.sh regloss`)
# and the study's reference weights and schedule (`train.sh regloss 1000 reference`), beside the unregularised
# baseline, on the validation subjects: on the 4 mm model grid (evaluate) and at full resolution (bench --quality).
# Chosen M: the smallest whose folding stays under 0.5 % in every dataset at full resolution.
set -euo pipefail
out=${1:-docs/results/sweep-3d-regscale}; B=runs/brains3d; e=epoch_0010.pt
.venv/bin/deepreg-ablation evaluate \
  --checkpoint $B/baseline/$e $B/regloss/$e $B/regloss_m4/$e $B/regloss_reference/$e \
  --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
  --threads 1 --example-pair 11 --out "$out/model-grid"
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 1 --pairs cycle --classical affine --peers \
  --init-align auto --threads 1 \
  --variants "baseline=$B/baseline/$e,regloss_m2=$B/regloss/$e,regloss_m4=$B/regloss_m4/$e,regloss_reference=$B/regloss_reference/$e" \
  --report "$out/full-resolution.md"
