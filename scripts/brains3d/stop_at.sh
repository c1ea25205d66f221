#!/usr/bin/env bash
# stop each variant's training once its epoch_$1.pt (= $1 x 100 steps) is written: equal budgets
e=$1
while true; do
  left=0
  for v in baseline regloss affine_basic affine_enhanced; do
    if [ -f runs/brains3d/$v/epoch_$e.pt ]; then pkill -f "train --variant $v " && echo "$(date) stopped $v at epoch_$e"; else left=1; fi
  done
  [ $left = 0 ] && break
  sleep 20
done
