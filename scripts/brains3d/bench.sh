#!/usr/bin/env bash
# Full resolution, all validation pairs of the four datasets: the shipped 3D models (8000 steps each: the 5000-step
# files continued 3000 steps as two-pass cascades, the last 1000 annealed, each file the average of its run's last ten
# checkpoints: scripts/brains3d/ship.sh) beside ANTs affine and SyN in the same run.
# The 1000-step regulariser sweep at full resolution: docs/results/sweep-3d-regscale/full-resolution.md.
# usage: bench.sh [REPORT]
set -euo pipefail
report=${1:-docs/benchmarks-quality-models-all-pairs.md}
.venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical ants --peers \
  --init-align auto --threads 1 --variants "baseline,regloss,affine_basic,affine_enhanced" --report "$report"
