#!/usr/bin/env bash
# Full resolution, all validation pairs of the four datasets: the shipped 3D models beside ANTs affine and SyN, and the
# other runs of the same budget (regulariser sweep M = 2, the study's reference setting) as named checkpoints.
# usage: bench.sh [REPORT]
set -euo pipefail
report=${1:-docs/benchmarks-quality-models-all-pairs.md}; B=runs/brains3d; e=epoch_0010.pt
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical ants --peers \
  --init-align auto --threads 1 \
  --variants "baseline,regloss,affine_basic,affine_enhanced,regloss_m2=$B/regloss_m2/$e,regloss_reference=$B/regloss_reference/$e,affine_enhanced_m2=$B/affine_enhanced_m2/$e,affine_enhanced_reference=$B/affine_enhanced_reference/$e" \
  --report "$report"
