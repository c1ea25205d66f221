#!/usr/bin/env bash
# Full resolution, all validation pairs of the four datasets: the shipped 3D models (2000 steps) beside ANTs affine and
# SyN, and the reference arm of the same budget (the study's regularisation weights and schedule) as named checkpoints.
# The 1000-step regulariser sweep at full resolution: docs/results/sweep-3d-regscale/full-resolution.md.
# usage: bench.sh [REPORT]
set -euo pipefail
report=${1:-docs/benchmarks-quality-models-all-pairs.md}; B=runs/brains3d; e=epoch_0020.pt
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical ants --peers \
  --init-align auto --threads 1 \
  --variants "baseline,regloss,affine_basic,affine_enhanced,regloss_reference=$B/regloss_reference_2k/$e,affine_enhanced_reference=$B/affine_enhanced_reference_2k/$e" \
  --report "$report"
