#!/usr/bin/env bash
# Full resolution, all validation pairs of the four datasets: the shipped 3D models (5000 steps each, the last
# 1000 annealed, each file the average of its run's last ten checkpoints: scripts/brains3d/ship.sh) beside ANTs
# affine and SyN in the same run.
# The equal-budget comparison of the two regularisation strengths is on the model grid (evaluate.sh); the 1000-step
# regulariser sweep at full resolution: docs/results/sweep-3d-regscale/full-resolution.md.
# usage: bench.sh [REPORT]
set -euo pipefail
report=${1:-docs/benchmarks-quality-models-all-pairs.md}
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical ants --peers \
  --init-align auto --threads 1 --variants "baseline,regloss,affine_basic,affine_enhanced" --report "$report"
