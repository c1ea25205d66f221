#!/usr/bin/env bash
# What distillation and longer training bought (issue 21), on the saved validation pairs of the 3D split, from the
# repository root after distill.sh and "ship.sh distill":
# 1. the model grid (deepreg-ablation evaluate, all labels, paired Wilcoxon tests against the first file): per variant
#    the 5000-step file against its distilled continuation (2000 more steps, the last 1000 annealed, averaged over
#    steps 1100-2000, where that run finished), its plain continuation without distillation (3000 more steps, averaged
#    over steps 2100-3000: "ship.sh plain", the files shipped since) and, for affine_enhanced, the two-pass cascade
#    where it finished; out docs/results/distill-3d/model-grid-VARIANT
# 2. full resolution, network alone (deepreg-ablation bench --quality, ANTs affine in the same run):
#    the affine_enhanced files ("shipped" = the 5000-step file, shipped when this ran); out
#    docs/results/distill-3d/full-resolution.md
# usage: distill_eval.sh [grid|full]... (default both); VARIANTS="..." (environment): the grid of these variants only
set -euo pipefail
D=runs/brains3d/distill; S=runs/brains3d/shipped-5000; out=docs/results/distill-3d; a=average_11-20.pt
grid() {
  for variant in ${VARIANTS:-baseline regloss affine_basic affine_enhanced}; do
    local files=("$S/$variant.pt")
    [ ! -f "$D/$variant/$a" ] || files+=("$D/$variant/$a")
    [ ! -f "$D/${variant}_plain/average_21-30.pt" ] || files+=("$D/${variant}_plain/average_21-30.pt")
    [ "$variant" != affine_enhanced ] || [ ! -f "$D/affine_enhanced_cascade2/$a" ] || files+=("$D/affine_enhanced_cascade2/$a")
    if [ ${#files[@]} = 1 ]; then echo "$variant: no distilled or plain file (distill.sh, ship.sh distill|plain): skipped"; continue; fi
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
