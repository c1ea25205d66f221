#!/usr/bin/env bash
# Every report made from the shipped 3D files (DeepRegAblation/Resources/Models/3d), one after the other, from the
# repository root: run it after the shipped files change (scripts/brains3d/ship.sh), on a quiet machine, since most of
# them time their cases (pause a training first: pkill -STOP -f "deepreg-ablation train", then pkill -CONT -f ...).
# About 1.6 h on the 2-core machine (the three benchmarks' own wall times: 2089 s, 2057 s and 899 s). Each step writes
# its report where the docs read it:
#   demo         the demo table of docs/models.md (runs/demo-s9.log: the demo's table, /usr/bin/time -v's wall time
#                and peak memory) and the README's picture (Resources/Screenshots/demo-outputs.png: the refined
#                pair's glyphs, Jacobian and checkerboard side by side, 400 px high)
#   time         docs/results/distill-3d/network_time.txt (the network alone, every validation pair, quiet, 2 threads)
#   ablation     docs/results/ablation-3d (model grid, the four variants, paired tests: evaluate.sh)
#   ixi          docs/results/tried-3d/ixi_diagnosis.txt (the shipped affine_enhanced on the IXI validation pair)
#   quality      docs/benchmarks-quality.md (one pair per dataset beside SyN, elastix, FireANTs, with refinement)
#   all_pairs    docs/benchmarks-quality-models-all-pairs.md (every validation pair beside ANTs affine and SyN:
#                bench.sh)
#   refinement   docs/benchmarks-refinement.md (refinement from the network against from the centre of mass, beside SyN)
# The model card, README and docs/models.md quote these outputs; update them from the new files by hand.
# usage: reports.sh [STEP...]   (default: all, in the order above)
set -euo pipefail
demo() {
  /usr/bin/time -v .venv/bin/deepreg-ablation demo --out runs/demo-s9 > runs/demo-s9.log 2>&1
  grep -v "^\s" runs/demo-s9.log; grep -E "Elapsed|Maximum resident" runs/demo-s9.log
  .venv/bin/python -c "from PIL import Image
views = [Image.open('runs/demo-s9/affine_enhanced+refine-recommended/%s.png' % n).convert('RGB')
         for n in ('glyphs', 'jacobian', 'checkerboard')]
views = [v.resize((round(v.width * 400 / v.height), 400), Image.LANCZOS) for v in views]
picture = Image.new('RGB', (sum(v.width for v in views), 400))
x = 0
for v in views:
    picture.paste(v, (x, 0))
    x += v.width
picture.save('Resources/Screenshots/demo-outputs.png', optimize=True)"
}
time_network() { .venv/bin/python scripts/brains3d/network_time.py > docs/results/distill-3d/network_time.txt; }
ablation() { scripts/brains3d/evaluate.sh docs/results/ablation-3d; }
ixi() {
  { echo "# .venv/bin/python scripts/brains3d/ixi_diagnosis.py   (scripts/brains3d/reports.sh ixi: the shipped" \
      "affine_enhanced.pt, trained as its model card says)"
    .venv/bin/python scripts/brains3d/ixi_diagnosis.py; } > docs/results/tried-3d/ixi_diagnosis.txt
}
quality() {
  .venv/bin/deepreg-ablation bench --quality --datasets all --jobs 1 --pairs 1 --classical syn \
    --peers elastix fireants@ixi --init-align com --refine recommended thorough@affine_enhanced --threads 2 \
    --report docs/benchmarks-quality.md
}
all_pairs() { scripts/brains3d/bench.sh; }
refinement() {
  .venv/bin/deepreg-ablation bench --refinement --datasets all --variants affine_enhanced --budgets 1,2,5 --threads 2 \
    --report docs/benchmarks-refinement.md
}
steps=("$@"); [ ${#steps[@]} -gt 0 ] || steps=(demo time ablation ixi quality all_pairs refinement)
for step in "${steps[@]}"; do
  case $step in
    demo|ablation|ixi|quality|all_pairs|refinement) echo "== $step ($(date -u +%H:%M))"; "$step" ;;
    time) echo "== time ($(date -u +%H:%M))"; time_network ;;
    *) echo "reports.sh: unknown step '$step' (demo, time, ablation, ixi, quality, all_pairs or refinement)" >&2
       exit 2 ;;
  esac
done
