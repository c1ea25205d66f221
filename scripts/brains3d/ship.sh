#!/usr/bin/env bash
# The shipped 3D files: each run's last ten checkpoints (steps 3100-4000, one per 100 steps) averaged into one file
# without the resume-only state (DeepRegAblationLib.checkpoints.ship_checkpoint with several sources).
# "ship.sh comparison": the same average over steps 2100-3000 of the tuned runs and of the reference arm
# (runs/brains3d/<variant>_reference_3k), for the equal-budget comparison of the two regularisation strengths
# (evaluate.sh, bench.sh); written as runs/brains3d/<run>/average_21-30.pt.
# usage (from the repository root): ship.sh [comparison]
set -euo pipefail
B=runs/brains3d; M=DeepRegAblation/Resources/Models/3d
average() {  # RUN_DIR FIRST_EPOCH LAST_EPOCH DESTINATION
  .venv/bin/python -c "import sys; sys.path.insert(0, 'DeepRegAblation')
from DeepRegAblationLib.checkpoints import ship_checkpoint
print(ship_checkpoint(['$1/epoch_%04d.pt' % e for e in range($2, $3 + 1)], '$4'))"
}
if [ "${1:-}" = comparison ]; then
  for run in regloss_m8 affine_enhanced_m8 regloss_reference_3k affine_enhanced_reference_3k; do
    average $B/$run 21 30 $B/$run/average_21-30.pt
  done
else
  average $B/baseline 31 40 $M/baseline.pt
  average $B/regloss_m8 31 40 $M/regloss.pt
  average $B/affine_basic 31 40 $M/affine_basic.pt
  average $B/affine_enhanced_m8 31 40 $M/affine_enhanced.pt
fi
