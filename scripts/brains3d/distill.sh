#!/usr/bin/env bash
# The distilled 3D models (issue 21), from the repository root; every step resumable (run it again to continue).
# 1. teacher fields: the recommended refinement of 120 training pairs per dataset (IXI: all 6), from the centre of mass
# 2. the four variants, each from its 5000-step file of commit e371607 (kept in runs/brains3d/shipped-5000), trained
#    STEPS more steps (the last ANNEAL annealed) with the distillation term beside their own losses (same recipe for all four)
# usage: distill.sh [teacher|VARIANT...]   (default: teacher, then the four variants one after the other)
#   STEPS (default 3000), ANNEAL (default 1000), DISTILL_WEIGHT (default 1), DEFORM_PASSES, OUT_SUFFIX (run folder suffix)
#   PLAIN=1: the control without distillation (same start, losses and anneal; run folder suffix _plain), e.g. the
#   longer plain run of the what-was-tried table: PLAIN=1 STEPS=3000 distill.sh affine_enhanced
#   START=DIR: start from DIR/VARIANT.pt instead of the 5000-step files, e.g. the longer cascade of issue 21 from the
#   shipped two-pass files (the four files of DeepRegAblation/Resources/Models/3d copied first to
#   runs/brains3d/shipped-cascade-8000, so that the start stays put when the shipped files change):
#   START=runs/brains3d/shipped-cascade-8000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_13k distill.sh VARIANT
#   and one more cycle from those runs' averages (ship.sh longer, copied to runs/brains3d/cascade-13000/VARIANT.pt):
#   START=runs/brains3d/cascade-13000 PLAIN=1 STEPS=2000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_15k distill.sh VARIANT
#   and from the same 13000-step files (the shipped ones: cp DeepRegAblation/Resources/Models/3d/VARIANT.pt
#   runs/brains3d/cascade-13000/ in a new checkout) 5000 steps more, with and without mirrored pairs (both images
#   of half the pairs mirrored left-right, train --mirror 0.5; EXTRA passes it through train.sh):
#   START=runs/brains3d/cascade-13000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_18k distill.sh VARIANT
#   EXTRA="--mirror 0.5" START=runs/brains3d/cascade-13000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 \
#     OUT_SUFFIX=_cascade2_18k_mirror distill.sh VARIANT
#   and 5000 steps more again from the 18000-step controls' averages (copied to runs/brains3d/cascade-18000/VARIANT.pt),
#   as they are and with IXI drawn as often as each other dataset (the same subjects and split as brains3d):
#   START=runs/brains3d/cascade-18000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_23k distill.sh VARIANT
#   EXTRA="--data miccai2012:../shared/data/miccai2012-oasis+lpba40:../shared/data/lpba40+ibsr18:../shared/data/ibsr18+ixi:../shared/data/ixi-t1-2mm@1" \
#     START=runs/brains3d/cascade-18000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_23k_ixi1 distill.sh VARIANT
#   and the same 5000 steps with the similarity counted over the fixed image's labelled brain grown by 2 voxels (8 mm)
#   only, so that the skull of the IXI heads stops pulling (train --similarity-mask-dilation 2):
#   EXTRA="--similarity-mask-dilation 2" START=runs/brains3d/cascade-18000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 \
#     OUT_SUFFIX=_cascade2_23k_brainmask distill.sh VARIANT
#   and 5000 steps with 30 % of the stripped-brain pairs placed in the skulls of the three training heads
#   (train --synthetic-heads 0.3, DeepRegAblationTrainingLib/data/heads.py), from the 13000-step files against the
#   18000-step control above (fifteenth session; it paid on IXI: the recipe of the next files since the sixteenth), and
#   5000 steps more from those runs' averages (copied to runs/brains3d/cascade-18000-heads/VARIANT.pt):
#   EXTRA="--synthetic-heads 0.3" START=runs/brains3d/cascade-13000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 \
#     OUT_SUFFIX=_cascade2_18k_heads distill.sh VARIANT
#   EXTRA="--synthetic-heads 0.3" START=runs/brains3d/cascade-18000-heads PLAIN=1 STEPS=5000 DEFORM_PASSES=2 \
#     OUT_SUFFIX=_cascade2_23k_heads distill.sh VARIANT
set -euo pipefail
teacher=runs/brains3d/teacher
steps=${STEPS:-3000}
run_teacher() {
  .venv/bin/deepreg-ablation teacher --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json \
    --pairs-per-dataset 120 --threads 1 --out "$teacher"
}
run_variant() {
  local variant=$1 reg=""
  case $variant in regloss|affine_enhanced) reg=m8 ;; esac
  local start=${START:-runs/brains3d/shipped-5000}
  mkdir -p runs/brains3d/shipped-5000
  [ -f "runs/brains3d/shipped-5000/$variant.pt" ] || git show "e371607:DeepRegAblation/Resources/Models/3d/$variant.pt" \
    > "runs/brains3d/shipped-5000/$variant.pt"
  [ -f "$start/$variant.pt" ] || { echo "distill.sh: no start file $start/$variant.pt" >&2; exit 2; }
  local distill=$teacher suffix=${OUT_SUFFIX:-}
  if [ -n "${PLAIN:-}" ]; then distill=""; suffix=${OUT_SUFFIX:-_plain}; fi
  INIT="$start/$variant.pt" DISTILL=$distill ANNEAL=${ANNEAL:-1000} \
    OUT="runs/brains3d/distill/$variant$suffix" scripts/brains3d/train.sh "$variant" "$steps" $reg
}
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(teacher baseline regloss affine_basic affine_enhanced)
for target in "${targets[@]}"; do
  if [ "$target" = teacher ]; then run_teacher; else run_variant "$target"; fi
done
