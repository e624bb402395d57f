#!/usr/bin/env bash
# Offline demonstration of a formation grid: `logitlab train-toy` runs of two sizes (1 and 2 layers) × two seeds,
# every run's checkpoints × the toy's held-out pronoun task as the cells of one `logitlab grid`, and compare.html
# drawing the four training curves together on one log-step axis.
#
#   benchmarks/demo_formation_grid.sh [OUT]            # sequential, in one process
#   RAY=local benchmarks/demo_formation_grid.sh [OUT]  # one Ray task per cell on this machine (needs logitlab[ray])
#   STEPS=0,10,30,100,300,1500 benchmarks/demo_formation_grid.sh [OUT]   # other checkpoints (default: all 24)
#
# The toys train one after the other (about 30 s each on one core). Generated patching pairs are off
# (patching_pairs: 0) to keep each cell short; the held-out task's explicit pairs are still patched.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-formation-grid}
STEPS=${STEPS:-all}
mkdir -p "$OUT/toys"
for layers in 1 2; do
  for seed in 0 1; do
    toy="$OUT/toys/l${layers}-s${seed}"
    [ -f "$toy/toy.json" ] || "$PY" -m logitlab train-toy --out "$toy" --layers "$layers" --seed "$seed"
  done
done
if [ "$STEPS" = all ]; then CKPT=all; else CKPT="[$STEPS]"; fi
# Every toy shares the held-out split (names and templates), so one task file serves all four models.
cat > "$OUT/grid.yaml" <<YAML
name: toy pronoun models, 1 and 2 layers × 2 seeds
models:
  - {model: toys/l1-s0, name: 1-layer-seed0}
  - {model: toys/l1-s1, name: 1-layer-seed1}
  - {model: toys/l2-s0, name: 2-layer-seed0}
  - {model: toys/l2-s1, name: 2-layer-seed1}
tasks: [toys/l2-s0/heldout-task.yaml]
checkpoints: $CKPT
patching_pairs: 0
YAML
time "$PY" -m logitlab grid "$OUT/grid.yaml" --out "$OUT" ${RAY:+--ray "$RAY"}
echo "open $OUT/compare.html (formation section: the four training curves)"
