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
# 3. the cascade (a second pass of the U-Net on the pre-warped pair), against the single-pass file of each variant (the
#    plain_8000 average, "ship.sh plain": byte for byte the file shipped when this ran, commit a259c12): those weights
#    run with two passes at inference only (scripts/brains3d/with_passes.py;
#    for affine_enhanced also three passes, and three affine-stage passes) and, where its run finished, the two-pass
#    cascade trained the same way (PLAIN=1 STEPS=3000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_plain distill.sh VARIANT,
#    averaged by "ship.sh plain"); on the model grid (out docs/results/distill-3d/cascade-model-grid-VARIANT) and, for
#    affine_enhanced, at full resolution (bench --quality as in 2; out docs/results/distill-3d/cascade-full-resolution.md);
#    "cascade3": each trained two-pass cascade against itself run with three passes (model grid; out
#    docs/results/distill-3d/cascade3-at-inference-model-grid-VARIANT)
# 4. "longer": the shipped two-pass files (kept as runs/brains3d/shipped-cascade-8000) against the same runs trained 5000
#    steps more (cascade2_13k, averaged by "ship.sh longer"), model grid, for each variant whose run has finished (out
#    docs/results/distill-3d/longer-model-grid-VARIANT); "longer_full": the same two affine_enhanced files at full
#    resolution (bench --quality as in 2; out docs/results/distill-3d/longer-full-resolution.md)
# 5. "cycle": the 13000-step averages against one more cycle from them (cascade2_15k: 1000 steps at the constant rate,
#    1000 annealed, averaged by "ship.sh cycle"), model grid, for each variant whose run has finished (out
#    docs/results/distill-3d/cycle-model-grid-VARIANT)
# 6. "mirror": the 13000-step files (shipped; runs/brains3d/cascade-13000 holds a copy) against 5000 steps more of
#    them without and with mirrored training pairs (cascade2_18k, cascade2_18k_mirror, averaged by "ship.sh mirror"),
#    model grid, for each variant whose two runs have finished (out docs/results/distill-3d/mirror-model-grid-VARIANT;
#    the mirror tested against the control: mirror-vs-control-model-grid-VARIANT);
#    "mirror_full": the three affine_enhanced files at full resolution, network alone, ANTs SyN in the same run (goal 1
#    of issue 21; 2 threads, a quiet machine; out docs/results/distill-3d/mirror-full-resolution.md)
# 7. "control": the 13000-step files against the control arm of 6 (cascade2_18k) alone, for the variants without a
#    mirror run (out docs/results/distill-3d/control-model-grid-VARIANT); "further": that control against 5000 steps
#    more of it (cascade2_23k: START=runs/brains3d/cascade-18000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2
#    OUT_SUFFIX=_cascade2_23k distill.sh VARIANT, after "ship.sh mirror" and a copy of each control's average to
#    runs/brains3d/cascade-18000/VARIANT.pt; averaged by "ship.sh further"; out
#    docs/results/distill-3d/further-model-grid-VARIANT); "further_full": the 13000-, 18000- and 23000-step
#    affine_enhanced files at full resolution as mirror_full (out docs/results/distill-3d/further-full-resolution.md)
# 8. "ixi": the 23000-step run against the same 5000 steps with IXI drawn as often as each other dataset
#    (cascade2_23k_ixi1: distill.sh as in 7 with OUT_SUFFIX=_cascade2_23k_ixi1 and EXTRA="--data
#    miccai2012:../shared/data/miccai2012-oasis+lpba40:../shared/data/lpba40+ibsr18:../shared/data/ibsr18+ixi:../shared/data/ixi-t1-2mm@1",
#    the same subjects, split and preprocessing as brains3d, whose IXI weight is 0.5; averaged by "ship.sh further"),
#    model grid (out docs/results/distill-3d/ixi-weight-model-grid-VARIANT); "ixi_full": the 18000- and both
#    23000-step affine_enhanced files at full resolution as mirror_full (out docs/results/distill-3d/ixi-weight-full-resolution.md)
#    "ixi_refinement": goal 2 (bench --refinement: from the network against from the centre of mass, beside SyN) with
#    the IXI-weight file on the two datasets where it is at SyN's Dice alone (out docs/results/distill-3d/ixi-weight-refinement.md)
# 9. "gap": the 13000-, 18000- and both 23000-step affine_enhanced files on pairs of training subjects laid out as the
#    validation pairs (scripts/brains3d/train_val_gap.py pairs -> docs/results/distill-3d/train_pairs.json) and on the
#    validation pairs, model grid (out docs/results/distill-3d/gap-{training,validation}-pairs-model-grid-affine_enhanced),
#    tabulated per dataset by train_val_gap.py table (out docs/results/distill-3d/train-val-gap.txt)
# 10. "brainmask": the 23000-step run against the same 5000 steps with the similarity counted over the fixed image's
#    labelled brain grown by 2 voxels only (cascade2_23k_brainmask: distill.sh as in 7 with
#    EXTRA="--similarity-mask-dilation 2" OUT_SUFFIX=_cascade2_23k_brainmask; averaged by "ship.sh further"), model grid
#    (out docs/results/distill-3d/brainmask-model-grid-VARIANT); "brainmask_full": the 23000-step affine_enhanced files at
#    full resolution as mirror_full (out docs/results/distill-3d/brainmask-full-resolution.md)
# 11. "heads": the 18000-step control (cascade2_18k) against the same 5000 steps with 30 % of the stripped-brain pairs
#    placed in the skulls of the training heads (cascade2_18k_heads: distill.sh with EXTRA="--synthetic-heads 0.3"
#    START=runs/brains3d/cascade-13000 OUT_SUFFIX=_cascade2_18k_heads; averaged by "ship.sh mirror"), model grid (out
#    docs/results/distill-3d/heads-model-grid-VARIANT); on IXI at full resolution: scripts/brains3d/ixi_skull.py;
#    "heads_full": the shipped, control and heads affine_enhanced files at full resolution as mirror_full (out
#    docs/results/distill-3d/heads-full-resolution.md); "heads_further": those 18000-step heads files against 5000
#    steps more of them, with the heads (cascade2_23k_heads, from runs/brains3d/cascade-18000-heads; averaged by
#    "ship.sh further"), model grid (out docs/results/distill-3d/heads-further-model-grid-VARIANT); "heads_further_full":
#    the affine_enhanced files of that chain at full resolution as mirror_full (out heads-further-full-resolution.md)
# usage: distill_eval.sh [grid|full|cascade|cascade3|cascade_full|longer|longer_full|cycle|mirror|mirror_full|control|
#   further|further_full|ixi|ixi_full|ixi_refinement|gap|brainmask|brainmask_full|heads|heads_full|heads_further|
#   heads_further_full]...
#   (default grid full);
# VARIANTS="..." (environment): the grid, cascade and longer parts of these variants only
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
passes() {  # SOURCE NAME DEFORM [AFFINE]: SOURCE with other passes at inference, written as NAME_x..., its path on stdout
  local file=runs/brains3d/inference-cascade/$2_x$3${4:+_a$4}.pt
  .venv/bin/python scripts/brains3d/with_passes.py "$1" "$file" "${@:3}" >&2
  echo "$file"
}
cascade() {
  for variant in ${VARIANTS:-baseline regloss affine_basic affine_enhanced}; do
    local single=$D/${variant}_plain/average_21-30.pt
    local files=("$single" "$(passes "$single" "$variant" 2)")
    [ ! -f "$D/${variant}_cascade2_plain/average_21-30.pt" ] || files+=("$D/${variant}_cascade2_plain/average_21-30.pt")
    [ "$variant" != affine_enhanced ] || files+=("$(passes "$single" "$variant" 3)" "$(passes "$single" "$variant" 1 3)")
    .venv/bin/deepreg-ablation evaluate --checkpoint "${files[@]}" --data brains3d:../shared/data \
      --split DeepRegAblation/Resources/Models/3d/split.json --threads 1 --example-pair 11 --out "$out/cascade-model-grid-$variant"
  done
}
cascade3() {  # the trained two-pass cascades run with three passes at inference
  for variant in ${VARIANTS:-baseline regloss affine_basic affine_enhanced}; do
    local trained=$D/${variant}_cascade2_plain/average_21-30.pt
    [ -f "$trained" ] || { echo "$variant: no trained cascade ($trained): skipped"; continue; }
    .venv/bin/deepreg-ablation evaluate --checkpoint "$trained" "$(passes "$trained" "${variant}_cascade2" 3)" \
      --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json --threads 1 --example-pair 11 \
      --out "$out/cascade3-at-inference-model-grid-$variant"
  done
}
cascade_full() {
  local single=$D/affine_enhanced_plain/average_21-30.pt
  local named="shipped=$single,shipped_2_passes=$(passes "$single" affine_enhanced 2)"
  [ ! -f "$D/affine_enhanced_cascade2_plain/average_21-30.pt" ] || \
    named+=",cascade2_trained=$D/affine_enhanced_cascade2_plain/average_21-30.pt"
  .venv/bin/deepreg-ablation bench --quality --datasets all --jobs 1 --pairs cycle --classical affine --peers \
    --init-align auto --threads 1 --variants "$named" --report "$out/cascade-full-resolution.md"
}
continued() {  # NAME START_FILE_OF_{} CONTINUED_FILE_OF_{}...: each variant's files ({} = the variant) on the model grid,
  # the continued ones tested against the first; a variant is skipped unless every file exists
  local name=$1; shift
  for variant in ${VARIANTS:-baseline regloss affine_basic affine_enhanced}; do
    local files=() file missing=""
    for file in "$@"; do files+=("${file//\{\}/$variant}"); [ -f "${files[-1]}" ] || missing=${files[-1]}; done
    [ -z "$missing" ] || { echo "$variant: no finished run ($missing: finish the run, then average it with ship.sh): skipped"; continue; }
    .venv/bin/deepreg-ablation evaluate --checkpoint "${files[@]}" \
      --data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json --threads 1 --example-pair 11 \
      --out "$out/$name-model-grid-$variant"
  done
}
longer() { continued longer "runs/brains3d/shipped-cascade-8000/{}.pt" "$D/{}_cascade2_13k/average_41-50.pt"; }
cycle() { continued cycle "$D/{}_cascade2_13k/average_41-50.pt" "$D/{}_cascade2_15k/average_11-20.pt"; }
mirror() {
  continued mirror "runs/brains3d/cascade-13000/{}.pt" "$D/{}_cascade2_18k/average_41-50.pt" \
    "$D/{}_cascade2_18k_mirror/average_41-50.pt"
  continued mirror-vs-control "$D/{}_cascade2_18k/average_41-50.pt" "$D/{}_cascade2_18k_mirror/average_41-50.pt"
}
with_syn() {  # REPORT NAME=FILE,...: the named files at full resolution, network alone, ANTs SyN in the same run
  .venv/bin/deepreg-ablation bench --quality --datasets all --jobs 1 --pairs cycle --classical syn --peers --init-align auto \
    --threads 2 --report "$out/$1" --variants "$2"
}
mirror_full() {
  local run=$D/affine_enhanced_cascade2_18k
  with_syn mirror-full-resolution.md \
    "shipped_13k=runs/brains3d/cascade-13000/affine_enhanced.pt,control_18k=$run/average_41-50.pt,mirror_18k=${run}_mirror/average_41-50.pt"
}
control() { continued control "runs/brains3d/cascade-13000/{}.pt" "$D/{}_cascade2_18k/average_41-50.pt"; }
further() { continued further "$D/{}_cascade2_18k/average_41-50.pt" "$D/{}_cascade2_23k/average_41-50.pt"; }
further_full() {
  with_syn further-full-resolution.md "shipped_13k=runs/brains3d/cascade-13000/affine_enhanced.pt,\
control_18k=$D/affine_enhanced_cascade2_18k/average_41-50.pt,further_23k=$D/affine_enhanced_cascade2_23k/average_41-50.pt"
}
ixi() { continued ixi-weight "$D/{}_cascade2_23k/average_41-50.pt" "$D/{}_cascade2_23k_ixi1/average_41-50.pt"; }
ixi_full() {
  with_syn ixi-weight-full-resolution.md "control_18k=$D/affine_enhanced_cascade2_18k/average_41-50.pt,\
further_23k=$D/affine_enhanced_cascade2_23k/average_41-50.pt,ixi1_23k=$D/affine_enhanced_cascade2_23k_ixi1/average_41-50.pt"
}
brainmask() { continued brainmask "$D/{}_cascade2_23k/average_41-50.pt" "$D/{}_cascade2_23k_brainmask/average_41-50.pt"; }
brainmask_full() {
  with_syn brainmask-full-resolution.md "further_23k=$D/affine_enhanced_cascade2_23k/average_41-50.pt,\
ixi1_23k=$D/affine_enhanced_cascade2_23k_ixi1/average_41-50.pt,brainmask_23k=$D/affine_enhanced_cascade2_23k_brainmask/average_41-50.pt"
}
heads() { continued heads "$D/{}_cascade2_18k/average_41-50.pt" "$D/{}_cascade2_18k_heads/average_41-50.pt"; }
heads_further() { continued heads-further "$D/{}_cascade2_18k_heads/average_41-50.pt" "$D/{}_cascade2_23k_heads/average_41-50.pt"; }
heads_further_full() {
  with_syn heads-further-full-resolution.md "shipped_13k=runs/brains3d/cascade-13000/affine_enhanced.pt,\
heads_18k=$D/affine_enhanced_cascade2_18k_heads/average_41-50.pt,heads_23k=$D/affine_enhanced_cascade2_23k_heads/average_41-50.pt"
}
heads_full() {
  with_syn heads-full-resolution.md "shipped_13k=runs/brains3d/cascade-13000/affine_enhanced.pt,\
control_18k=$D/affine_enhanced_cascade2_18k/average_41-50.pt,heads_18k=$D/affine_enhanced_cascade2_18k_heads/average_41-50.pt"
}
ixi_refinement() {
  .venv/bin/deepreg-ablation bench --refinement --datasets lpba40,ibsr18 --budgets 1,2,5 --threads 2 \
    --variants "affine_enhanced=$D/affine_enhanced_cascade2_23k_ixi1/average_41-50.pt" \
    --report "$out/ixi-weight-refinement.md"
}
longer_full() {
  .venv/bin/deepreg-ablation bench --quality --datasets all --jobs 1 --pairs cycle --classical affine --peers \
    --init-align auto --threads 1 --report "$out/longer-full-resolution.md" \
    --variants "shipped=runs/brains3d/shipped-cascade-8000/affine_enhanced.pt,longer_13k=$D/affine_enhanced_cascade2_13k/average_41-50.pt"
}
gap() {
  local files=(runs/brains3d/cascade-13000/affine_enhanced.pt) suffix which pairs
  for suffix in 18k 23k 23k_ixi1; do files+=("$D/affine_enhanced_cascade2_$suffix/average_41-50.pt"); done
  .venv/bin/python scripts/brains3d/train_val_gap.py pairs "$out/train_pairs.json"
  for which in training validation; do
    pairs=$out/train_pairs.json; [ $which = training ] || pairs=docs/results/ablation-3d/val_pairs.json
    .venv/bin/deepreg-ablation evaluate --checkpoint "${files[@]}" --data brains3d:../shared/data \
      --split DeepRegAblation/Resources/Models/3d/split.json --pairs "$pairs" --threads 1 \
      --out "$out/gap-$which-pairs-model-grid-affine_enhanced"
  done
  .venv/bin/python scripts/brains3d/train_val_gap.py table "$out/gap-training-pairs-model-grid-affine_enhanced" \
    "$out/gap-validation-pairs-model-grid-affine_enhanced" > "$out/train-val-gap.txt"
}
parts=("$@"); [ ${#parts[@]} -gt 0 ] || parts=(grid full)
for part in "${parts[@]}"; do "$part"; done
