#!/usr/bin/env bash
# The shipped 3D files (13000 steps, two U-Net passes, issue 21): each variant's 8000-step two-pass file ("ship.sh 8000"
# below, kept as runs/brains3d/shipped-cascade-8000) trained 5000 steps more (START=runs/brains3d/shipped-cascade-8000
# PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_13k distill.sh VARIANT: 4000 at the constant rate, 1000
# annealed), and the last ten checkpoints of that run (its steps 4100-5000, one per 100 steps: the annealed end)
# averaged into one file without the resume-only state (DeepRegAblationLib.models.checkpoints.ship_checkpoint with
# several sources). Refused unless all four runs have reached step 5000, so the four variants ship from one recipe.
# "ship.sh 8000": the 8000-step files shipped before (commit 85b3c8e): each variant's 5000-step file trained 3000 steps
# more as a two-pass cascade (PLAIN=1 STEPS=3000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_plain distill.sh VARIANT), its
# steps 2100-3000 averaged, written to runs/brains3d/shipped-cascade-8000 (the start of the 13000-step runs, and the
# second group of evaluate.sh).
# "ship.sh plain": the same average of the single-pass runs trained the same way (<variant>_plain, the files shipped
# before the cascade, commit a259c12), written as runs/brains3d/distill/<variant>_plain/average_21-30.pt
# (distill_eval.sh, evaluate.sh), and of the two-pass cascades (<variant>_cascade2_plain, where the run has reached
# step 3000).
# "ship.sh 5000": the 5000-step files shipped before (commit e371607, kept as runs/brains3d/shipped-5000 by distill.sh):
# the average of steps 4100-5000 of runs/brains3d/<run> (train.sh with ANNEAL=1000).
# "ship.sh comparison": the same average over steps 2100-3000 of the tuned runs and of the reference arm
# (runs/brains3d/<variant>_reference_3k), for the equal-budget comparison of the two regularisation strengths
# (evaluate.sh), written as runs/brains3d/<run>/average_21-30.pt; and over steps 3100-4000 of the four shipped runs
# (the files shipped before the anneal, for weight_averaging.py), written as runs/brains3d/<run>/average_31-40.pt.
# "ship.sh distill" (issue 21): the same average over the annealed steps 1100-2000 of the distilled runs
# (runs/brains3d/distill/<run>/average_11-20.pt), for distill_eval.sh; "ship.sh distilled" would ship them.
# "ship.sh longer": the shipped average, written as runs/brains3d/distill/<variant>_cascade2_13k/average_41-50.pt
# where the run has reached step 5000, for distill_eval.sh longer.
# "ship.sh cycle": one more cycle from those 13000-step averages (1000 steps at the constant rate, 1000 annealed:
# <variant>_cascade2_15k), averaged over its annealed steps 1100-2000 into <run>/average_11-20.pt where the run has
# reached step 2000, for distill_eval.sh cycle.
# "ship.sh mirror": the same average over steps 4100-5000 of the next arm and its control (<variant>_cascade2_18k_mirror,
# <variant>_cascade2_18k: 5000 steps more from the 13000-step files, with and without train --mirror 0.5), written as
# <run>/average_41-50.pt where the run has reached step 5000, for distill_eval.sh mirror; and of the synthetic-heads arm
# (<variant>_cascade2_18k_heads: the control with train --synthetic-heads 0.3), for distill_eval.sh heads.
# "ship.sh further": the same average over steps 4100-5000 of 5000 steps more from the controls' averages
# (<variant>_cascade2_23k, started from runs/brains3d/cascade-18000/VARIANT.pt) and of the same with IXI weighted up
# (<variant>_cascade2_23k_ixi1) and with the similarity counted over the labelled brain only
# (<variant>_cascade2_23k_brainmask), for distill_eval.sh further, ixi and brainmask; and of the synthetic-heads chain
# (<variant>_cascade2_23k_heads, from the 18000-step heads arms' averages in runs/brains3d/cascade-18000-heads), for
# distill_eval.sh heads_further.
# "ship.sh heads": the next files, to ship when all four runs have finished (the synthetic-heads chain): each variant's
# shipped 13000-step file (kept as runs/brains3d/cascade-13000) trained 5000 steps more with 30 % of the stripped-brain
# training pairs placed in the skulls of the training heads (EXTRA="--synthetic-heads 0.3"
# START=runs/brains3d/cascade-13000 PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_18k_heads distill.sh
# VARIANT), that run's average copied to runs/brains3d/cascade-18000-heads/VARIANT.pt and trained 5000 steps more the
# same way (START=runs/brains3d/cascade-18000-heads ... OUT_SUFFIX=_cascade2_23k_heads), steps 4100-5000 averaged into
# the shipped file. carry.sh averaged keeps a finished run's average_41-50.pt ("ship.sh further" or "ship.sh average
# RUN 41 50 ...") and drops its epoch files, so this mode averages the epoch files where they are on disk and copies the
# kept average where they are not. Refused unless all four runs have finished, so the four ship from one recipe.
# "ship.sh average RUN_DIR FIRST LAST DESTINATION": the mean of one run's checkpoints FIRST..LAST (epoch numbers) into
# DESTINATION (scripts/brains3d/gpu_train.sh); PY (environment): the Python to use (default .venv/bin/python).
# usage (from the repository root): ship.sh [heads|8000|plain|5000|comparison|distill|distilled|longer|cycle|mirror|further|average ...]
set -euo pipefail
B=runs/brains3d; M=DeepRegAblation/Resources/Models/3d
average() {  # RUN_DIR FIRST_EPOCH LAST_EPOCH DESTINATION
  "${PY:-.venv/bin/python}" -c "import sys; sys.path.insert(0, 'DeepRegAblation')
from DeepRegAblationLib.models.checkpoints import ship_checkpoint
print(ship_checkpoint(['$1/epoch_%04d.pt' % e for e in range($2, $3 + 1)], '$4'))"
}
D=$B/distill; VARIANTS="baseline regloss affine_basic affine_enhanced"
if [ -z "${1:-}" ]; then
  for variant in $VARIANTS; do
    [ -f $D/${variant}_cascade2_13k/epoch_0050.pt ] || {
      echo "ship.sh: $D/${variant}_cascade2_13k has not reached step 5000 (resume it: START=$B/shipped-cascade-8000" \
        "PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_13k scripts/brains3d/distill.sh $variant)" >&2; exit 2; }
  done
  for variant in $VARIANTS; do average $D/${variant}_cascade2_13k 41 50 $M/$variant.pt; done
elif [ "$1" = heads ]; then
  for variant in $VARIANTS; do
    run=$D/${variant}_cascade2_23k_heads
    [ -f $run/epoch_0050.pt ] || [ -f $run/average_41-50.pt ] || {
      echo "ship.sh: $run has not reached step 5000 (resume it: EXTRA=\"--synthetic-heads 0.3\"" \
        "START=$B/cascade-18000-heads PLAIN=1 STEPS=5000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_23k_heads" \
        "scripts/brains3d/distill.sh $variant)" >&2; exit 2; }
  done
  for variant in $VARIANTS; do
    run=$D/${variant}_cascade2_23k_heads
    if [ -f $run/epoch_0050.pt ]; then average $run 41 50 $M/$variant.pt; else cp $run/average_41-50.pt $M/$variant.pt; fi
  done
elif [ "$1" = 8000 ]; then
  for variant in $VARIANTS; do
    [ -f $D/${variant}_cascade2_plain/epoch_0030.pt ] || {
      echo "ship.sh: $D/${variant}_cascade2_plain has not reached step 3000 (resume it:" \
        "PLAIN=1 STEPS=3000 DEFORM_PASSES=2 OUT_SUFFIX=_cascade2_plain scripts/brains3d/distill.sh $variant)" >&2; exit 2; }
  done
  mkdir -p $B/shipped-cascade-8000
  for variant in $VARIANTS; do average $D/${variant}_cascade2_plain 21 30 $B/shipped-cascade-8000/$variant.pt; done
elif [ "$1" = plain ]; then
  for variant in $VARIANTS; do average $D/${variant}_plain 21 30 $D/${variant}_plain/average_21-30.pt; done
  for variant in $VARIANTS; do
    run=$D/${variant}_cascade2_plain
    [ ! -f $run/epoch_0030.pt ] || average $run 21 30 $run/average_21-30.pt
  done
elif [ "$1" = distill ]; then
  for run in baseline regloss affine_basic affine_enhanced affine_enhanced_cascade2; do
    [ ! -f $D/$run/epoch_0020.pt ] || average $D/$run 11 20 $D/$run/average_11-20.pt
  done
elif [ "$1" = average ] && [ $# = 5 ]; then
  average "$2" "$3" "$4" "$5"
elif [ "$1" = longer ] || [ "$1" = cycle ] || [ "$1" = mirror ] || [ "$1" = further ]; then
  suffixes=_cascade2_13k first=41 last=50
  [ "$1" != cycle ] || { suffixes=_cascade2_15k first=11 last=20; }
  [ "$1" != mirror ] || suffixes="_cascade2_18k _cascade2_18k_mirror _cascade2_18k_heads"
  [ "$1" != further ] || suffixes="_cascade2_23k _cascade2_23k_ixi1 _cascade2_23k_brainmask _cascade2_23k_heads"
  for variant in $VARIANTS; do
    for suffix in $suffixes; do
      run=$D/$variant$suffix
      [ ! -f $run/epoch_00$last.pt ] || average $run $first $last $run/average_$first-$last.pt
    done
  done
elif [ "$1" = distilled ]; then
  for variant in $VARIANTS; do average $D/$variant 11 20 $M/$variant.pt; done
elif [ "$1" = comparison ]; then
  for run in regloss_m8 affine_enhanced_m8 regloss_reference_3k affine_enhanced_reference_3k; do
    average $B/$run 21 30 $B/$run/average_21-30.pt
  done
  for run in baseline regloss_m8 affine_basic affine_enhanced_m8; do
    average $B/$run 31 40 $B/$run/average_31-40.pt
  done
elif [ "$1" = 5000 ]; then
  average $B/baseline 41 50 $M/baseline.pt
  average $B/regloss_m8 41 50 $M/regloss.pt
  average $B/affine_basic 41 50 $M/affine_basic.pt
  average $B/affine_enhanced_m8 41 50 $M/affine_enhanced.pt
else
  echo "ship.sh: unknown mode '$1' (heads, 8000, plain, 5000, comparison, distill, distilled, longer, cycle, mirror, further or average RUN FIRST LAST DEST; none = the shipped files)" >&2; exit 2
fi
