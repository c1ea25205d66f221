#!/usr/bin/env bash
# Full resolution, all validation pairs of the four datasets: the shipped 3D models (4000 steps) beside ANTs affine and
# SyN, and, as named checkpoints, the equal-budget comparison of the two regularisation strengths at 3000 steps (the
# tuned runs' step-3000 checkpoints and the reference arm: the study's weights and schedule over 3000 steps).
# The 1000-step regulariser sweep at full resolution: docs/results/sweep-3d-regscale/full-resolution.md.
# usage: bench.sh [REPORT]
set -euo pipefail
report=${1:-docs/benchmarks-quality-models-all-pairs.md}; B=runs/brains3d; e3=epoch_0030.pt
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical ants --peers \
  --init-align auto --threads 1 \
  --variants "baseline,regloss,affine_basic,affine_enhanced,regloss_3000=$B/regloss_m8/$e3,regloss_reference_3000=$B/regloss_reference_3k/$e3,affine_enhanced_3000=$B/affine_enhanced_m8/$e3,affine_enhanced_reference_3000=$B/affine_enhanced_reference_3k/$e3" \
  --report "$report"
