#!/usr/bin/env bash
# 3D brain models (the shipped 3D files): one variant per call, from the repository root, resumable
# (run it again to continue a killed or stopped run from its last.pt).
# usage: train.sh VARIANT [STEPS] [REG]
#   REG, for the regularised variants (regloss, affine_enhanced) only: "mN" = constant schedule, every
#   regulariser weight times N (the shipped files: m8, chosen by the sweeps in docs/results/sweep-3d-regscale);
#   "reference" = the study's weights and schedule. The run folder is runs/brains3d/VARIANT[_REG], or $OUT when set
#   (e.g. a second run of the reference setting with more steps: its schedule decays over the whole run, so a longer
#   run of it starts afresh rather than resuming a shorter one).
# ANNEAL=N (environment): the last N steps lower the learning rate to 0 along a half cosine (--lr-anneal-steps).
#   The shipped files: `ANNEAL=1000 train.sh VARIANT 5000 [m8]` = 4000 steps at the constant rate, then 1000 annealed
#   (the runs were trained to 4000 first and resumed; on the CPU that gives the same weights as one 5000-step run).
# SPACING=MM (environment): another model grid spacing than the shipped 4 mm (the grid covers the same
#   192 x 256 x 192 mm, data.brain_grid_shape; grids.sh);
#   EPOCH=N: a checkpoint every N steps (default 100).
# INIT=CKPT (environment): start from these weights instead of a fresh network (affine variants: instead of the
#   pretrained affine stage), e.g. the files shipped before (the distilled models start from the 5000-step files of
#   commit e371607, kept as runs/brains3d/shipped-5000/VARIANT.pt by distill.sh).
# DISTILL=DIR (environment): distillation from the teacher fields in DIR (deepreg-ablation teacher), weight
#   DISTILL_WEIGHT (default 1); DEFORM_PASSES=N: a cascade of N U-Net passes.
# TRAIN="COMMAND" (environment): what runs the training (default: .venv/bin/deepreg-ablation train), e.g. the launcher
#   of scripts/brains3d/gpu_pack.py on a machine without the data; EXTRA="ARGS": arguments added last (they win over
#   the ones above, e.g. --threads 2 --device cuda).
set -euo pipefail
variant=$1; steps=${2:-20000}; reg=${3:-}
out=${OUT:-runs/brains3d/$variant${reg:+_$reg}}
common=(--data brains3d:../shared/data --split DeepRegAblation/Resources/Models/3d/split.json
        --steps "$steps" --steps-per-epoch "${EPOCH:-100}" --checkpoint-every 1 --seg-weight 1 --threads 1 --rotation-deg 5
        --no-progress --no-tensorboard --resume --out "$out" --lr-anneal-steps "${ANNEAL:-0}")
extra=()
[ -z "${SPACING:-}" ] || extra+=(--spacing "$SPACING")
case $variant in
  regloss|affine_enhanced)
    case $reg in
      reference) extra+=(--schedule reference) ;;
      m*) extra+=(--schedule constant --reg-scale "${reg#m}") ;;
      *) echo "$variant needs REG: mN (m8 = the shipped setting) or reference, not '$reg'" >&2; exit 2 ;;
    esac ;;
  *) [ -z "$reg" ] || { echo "$variant has no regularisers: no REG" >&2; exit 2; } ;;
esac
[ -z "${DISTILL:-}" ] || extra+=(--distill "$DISTILL" --distill-weight "${DISTILL_WEIGHT:-1}")
[ -z "${DEFORM_PASSES:-}" ] || extra+=(--deform-passes "$DEFORM_PASSES")
case $variant in
  affine_basic|affine_enhanced) extra+=(--init-from "${INIT:-runs/brains3d/affine_pretrain/last.pt}" --affine-passes 2) ;;
  *) [ -z "${INIT:-}" ] || extra+=(--init-from "$INIT") ;;
esac
read -ra train <<< "${TRAIN:-.venv/bin/deepreg-ablation train}"
read -ra added <<< "${EXTRA:-}"
exec "${train[@]}" --variant "$variant" "${common[@]}" "${extra[@]}" "${added[@]}"
