#!/usr/bin/env bash
# Carry unfinished training runs into the next checkout (issue 21). A new checkout holds only what has landed: the
# fifteenth session began in one, and the ignored runs/ folder (three runs at 1400-1900 of 5000 steps, the four
# 18000-step averages they started from) was gone. Committing what a run needs to go on keeps it:
#   carry.sh RUN_DIR...       for each run folder: slims the epoch files of the averaging window (epoch >= FIRST,
#                             default 41: steps 4100-5000, what ship.sh averages) to their weights (ship_checkpoint,
#                             about a third of the size; ship.sh averages them as before) and stages last.pt (the
#                             whole training state that --resume needs), those epoch files and the run's small files
#                             past .gitignore. Commit them; the same distill.sh command then resumes in a new checkout.
#   carry.sh drop RUN_DIR...  unstages them once the run has been averaged (git rm --cached: the files stay on disk).
#   carry.sh averaged RUN_DIR...  for a finished run that ship.sh has averaged: unstages it as drop does, then stages
#                             its average_*.pt (the start of the next run of the chain: about 2 MB) and small files.
# FIRST (environment): the first epoch file carried. PY: the Python to use (default .venv/bin/python).
set -euo pipefail
first=${FIRST:-41}
small_files() {  # RUN: the run's configuration and logs that exist, appended to files
  local name
  for name in config.json split.json val_pairs.json steps.csv steps.jsonl epochs.csv epochs.jsonl; do
    [ ! -f "$1/$name" ] || files+=("$1/$name")
  done
}
if [ "${1:-}" = drop ] || [ "${1:-}" = averaged ]; then
  mode=$1; shift
  for run in "$@"; do
    git rm -r -q -f --cached --ignore-unmatch "$run"
    [ "$mode" = averaged ] || continue
    files=("$run"/average_*.pt)
    [ -f "${files[0]}" ] || { echo "carry.sh: $run has no average_*.pt (average it with ship.sh first)" >&2; exit 2; }
    small_files "$run"
    git add -f "${files[@]}"
  done
  exit 0
fi
[ $# -gt 0 ] || { echo "usage: carry.sh RUN_DIR... | carry.sh drop RUN_DIR... | carry.sh averaged RUN_DIR..." >&2; exit 2; }
for run in "$@"; do
  [ -f "$run/last.pt" ] || { echo "carry.sh: $run has no last.pt (nothing to resume from)" >&2; exit 2; }
  files=("$run/last.pt")
  small_files "$run"
  for ckpt in "$run"/epoch_*.pt; do
    [ -f "$ckpt" ] || continue
    epoch=$(basename "$ckpt" .pt); epoch=$((10#${epoch#epoch_}))
    [ "$epoch" -ge "$first" ] || continue
    "${PY:-.venv/bin/python}" - "$ckpt" <<'EOF'
import sys; sys.path.insert(0, "DeepRegAblation")
import torch
from DeepRegAblationLib.models.checkpoints import ship_checkpoint
path = sys.argv[1]
if "optimizer_state" in torch.load(path, map_location="cpu", weights_only=True):
    ship_checkpoint(path, path)  # atomic: the weights, config and history; no optimiser moments
EOF
    files+=("$ckpt")
  done
  git add -f "${files[@]}"
  echo "carry.sh: staged ${#files[@]} files of $run ($(du -ch "${files[@]}" | tail -n1 | cut -f1))"
done
