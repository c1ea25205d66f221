#!/usr/bin/env bash
# What distillation and longer training bought (issue 21), on the saved validation pairs of the 3D split, from the
# repository root after distill.sh and "ship.sh distill":
# 1. the model grid (deepreg-ablation evaluate, all labels, paired Wilcoxon tests against the first file): per variant
#    the file shipped before (5000 steps) against its distilled continuation (2000 more steps, the last 1000
#    annealed, averaged over steps 1100-2000); for affine_enhanced also the plain continuation without distillation
#    (3000 more steps) and the two-pass cascade; out docs/results/distill-3d/model-grid-VARIANT
# 2. full resolution, network alone (deepreg-ablation bench --quality, ANTs affine in the same run):
#    the affine_enhanced files; out docs/results/distill-3d/full-resolution.md
# usage: distill_eval.sh [grid|full]... (default both)
set -euo pipefail
D=runs/brains3d/distill; S=runs/brains3d/shipped-5000; out=docs/results/distill-3d; a=average_11-20.pt
grid() {
  for variant in baseline regloss affine_basic affine_enhanced; do
    if [ ! -f "$D/$variant/$a" ]; then echo "$variant: no $D/$variant/$a (run distill.sh $variant, ship.sh distill): skipped"; continue; fi
    local files=("$S/$variant.pt" "$D/$variant/$a")
    if [ "$variant" = affine_enhanced ]; then
      files+=("$D/affine_enhanced_plain/average_21-30.pt")
      [ ! -f "$D/affine_enhanced_cascade2/$a" ] || files+=("$D/affine_enhanced_cascade2/$a")
    fi
    .venv/bin/deepreg-ablation evaluate --checkpoint "${files[@]}" --data brains3d:../shared/data \
      --split DeepRegAblation/Resources/Models/3d/split.json --threads 1 --example-pair 11 --out "$out/model-grid-$variant"
  done
}
full() {
  local named="shipped=$S/affine_enhanced.pt,distilled=$D/affine_enhanced/$a,plain_8000=$D/affine_enhanced_plain/average_21-30.pt"
  [ ! -f "$D/affine_enhanced_cascade2/$a" ] || named+=",cascade2=$D/affine_enhanced_cascade2/$a"
  .venv/bin/deepreg-ablation bench --quality --datasets all --jobs 1 --pairs cycle --classical affine --peers \
    --init-align auto --threads 1 --variants "$named" --report "$out/full-resolution.md"
}
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(grid full)
for part in "${parts[@]}"; do "$part"; done
