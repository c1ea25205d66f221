#!/usr/bin/env bash
# The four shipped 3D cascades trained longer on one lent GPU (issue 21), within a wall-clock budget, in one call.
# Each variant starts from its shipped two-pass file (DeepRegAblation/Resources/Models/3d/VARIANT.pt, 13000 steps)
# with the shipped recipe (scripts/brains3d/train.sh: batch 1, --deform-passes 2, the same losses, augmentation and
# learning rate; the data from the pack of scripts/brains3d/gpu_pack.py, since the device machine has no ../shared) and
# the synthetic heads of the next files (train --synthetic-heads HEADS, default 0.3; HEADS=0: none). All four run at once:
# 1. a probe: each trains at the constant rate for PROBE seconds, and its steps per second are read off steps.csv;
# 2. the common length N (steps, a multiple of EPOCH) that the slowest variant reaches in the time left, of which the
#    last A = 40 % are annealed (a constant-rate run resumes to the same result with a longer --steps, train --help);
#    the four resume to step N;
# 3. each run's last ten checkpoints averaged (as scripts/brains3d/ship.sh does) into average.pt, and the run folder
#    (average.pt, last.pt, logs) packed into $OUT/VARIANT.tgz.
# usage (from the repository root, on the device): scripts/brains3d/gpu_train.sh BUDGET_SECONDS
#   PY (default python3), DEVICE (default cuda), PROBE (default 90), WORKERS (default 2), HEADS (default 0.3), R (run folder,
#   default runs/brains3d/gpu), OUT (default $R/out), EPOCH (steps per checkpoint, default 100; small for a CPU trial),
#   START (folder of the four start files VARIANT.pt, default the shipped files, DeepRegAblation/Resources/Models/3d;
#   carry another folder under runs/).
set -uo pipefail
T0=$(date +%s); BUDGET=${1:?budget in seconds}
PY=${PY:-python3}; DEVICE=${DEVICE:-cuda}; PROBE=${PROBE:-90}; E=${EPOCH:-100}; R=${R:-runs/brains3d/gpu}; OUT=${OUT:-$R/out}
VARIANTS="baseline regloss affine_basic affine_enhanced"; START=${START:-DeepRegAblation/Resources/Models/3d}
mkdir -p "$R" "$OUT"
log() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$OUT/gpu_train.log"; }
log "device: $($PY -c 'import torch; print(torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda")' 2>&1)"
pids=()
launch() {  # VARIANT STEPS ANNEAL: scripts/brains3d/train.sh (the shipped recipe), its data from the pack
  local reg=""
  case $1 in regloss|affine_enhanced) reg=m8 ;; esac
  INIT="$START/$1.pt" ANNEAL=$3 DEFORM_PASSES=2 EPOCH=$E OUT="$R/$1" \
    TRAIN="$PY scripts/brains3d/gpu_pack.py train .gpu/brains3d_4mm.npz --" \
    EXTRA="--threads 2 --workers ${WORKERS:-2} --device $DEVICE --no-amp --synthetic-heads ${HEADS:-0.3}" \
    scripts/brains3d/train.sh "$1" "$2" $reg >> "$R/$1.log" 2>&1 &
  pids+=($!)
}
steps_done() { [ -f "$R/$1/steps.csv" ] && echo $(( $(wc -l < "$R/$1/steps.csv") - 1 )) || echo 0; }
stop_all() { kill "${pids[@]}" 2>/dev/null; sleep 3; pkill -f "gpu_pack.py train" 2>/dev/null; wait 2>/dev/null; pids=(); }

# 1. probe
for v in $VARIANTS; do launch "$v" 1000000 0; done
sleep "$PROBE"
declare -A c1; for v in $VARIANTS; do c1[$v]=$(steps_done "$v"); done
sleep 30
declare -A rate; left=$(( BUDGET - ($(date +%s) - T0) - 75 )); n=1000000000; top=0
for v in $VARIANTS; do
  c2=$(steps_done "$v"); rate[$v]=$(( (c2 - c1[$v]) * 1000 / 30 ))  # steps per 1000 s
  reach=$(( c2 + rate[$v] * left * 85 / 100 / 1000 )); [ $reach -lt $n ] && n=$reach; [ $c2 -gt $top ] && top=$c2
  log "$v: $c2 steps in the probe, $(( rate[$v] )) steps per 1000 s"
done
stop_all
n=$(( n / E * E )); anneal=$(( n * 40 / 100 / E * E )); [ $(( n - anneal )) -lt $(( top + E )) ] && anneal=$(( (n - top - E) / E * E ))
log "common length $n steps, the last $anneal annealed ($left s left for it)"
if [ $n -le $(( top + E )) ] || [ $anneal -lt $E ]; then log "too little time for an anneal: stopping at the probe"; n=0; fi

# 2. the runs to step n
if [ $n -gt 0 ]; then
  for v in $VARIANTS; do launch "$v" "$n" "$anneal"; done
  while [ $(( $(date +%s) - T0 )) -lt $(( BUDGET - 40 )) ]; do
    alive=0; for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break; sleep 5
  done
  stop_all
fi

# 3. averages and packs
for v in $VARIANTS; do
  last=$(ls "$R/$v"/epoch_*.pt 2>/dev/null | sort | tail -n 1); [ -n "$last" ] || continue
  e=$(basename "$last" .pt); e=$((10#${e#epoch_})); first=$(( e > 9 ? e - 9 : 1 ))
  PY=$PY scripts/brains3d/ship.sh average "$R/$v" "$first" "$e" "$R/$v/average.pt" >> "$R/$v.log" 2>&1
  log "$v: reached step $(( e * E )) (of $n); average.pt = epochs $first-$e; last val: $(tail -n 1 "$R/$v/epochs.csv" | cut -d, -f2,8)"
  cp "$R/$v.log" "$R/$v/train.log"
  tar -czf "$OUT/$v.tgz" -C "$R" "$v/average.pt" "$v/last.pt" "$v/epochs.csv" "$v/steps.csv" "$v/config.json" "$v/train.log"
done
log "done"
