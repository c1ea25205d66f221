#!/usr/bin/env bash
# Which model grid two CPU cores can train: `baseline` trained from scratch at 4, 3 and 2 mm (the same
# 192 x 256 x 192 mm field of view, data.brain_grid_shape), the three runs at once for the same wall-clock budget
# (one thread each, so they share the cores equally), a checkpoint every 50 steps; then network-only Dice at full
# resolution on all 17 validation pairs (bench --quality, ANTs affine beside) for each run's last three checkpoints
# (equal time; three, because one checkpoint's Dice swings from one to the next) and for the checkpoint at the last
# step that all three runs reached (equal steps).
# usage (from the repository root): grids.sh [MINUTES] [REPORT]
#   (default 25 minutes and docs/results/grids-3d/grids.md; MINUTES = 0: evaluate the existing runs only)
set -euo pipefail
minutes=${1:-25}; report=${2:-docs/results/grids-3d/grids.md}
B=runs/brains3d; EPOCH=50
if [ "$minutes" != 0 ]; then
  for mm in 4 3 2; do
    OUT=$B/grid_${mm}mm SPACING=$mm EPOCH=$EPOCH timeout "${minutes}m" scripts/brains3d/train.sh baseline 100000 \
      > $B/grid_${mm}mm.log 2>&1 &
  done
  wait || true
fi
epochs() { ls $B/grid_$1mm/epoch_*.pt | sed 's/.*epoch_0*\([0-9]*\)\.pt/\1/' | sort -n; }
common=$(for mm in 4 3 2; do epochs $mm | tail -1; done | sort -n | head -1)
variants=""
for mm in 4 3 2; do
  for e in $( (epochs $mm | tail -3; echo "$common") | sort -nu); do
    variants+="grid${mm}mm_step$((e * EPOCH))=$(printf "$B/grid_${mm}mm/epoch_%04d.pt" "$e"),"
  done
done
exec .venv/bin/deepreg-ablation bench --quality --datasets all --jobs 2 --pairs cycle --classical affine --peers \
  --init-align auto --threads 1 --variants "${variants%,}" --report "$report"
