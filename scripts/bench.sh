#!/usr/bin/env bash
# Runs every benchmark in benchmarks/ (each prints a ratio against its baseline and writes
# benchmarks/results/<name>.json). Pass names to run a subset: bash scripts/bench.sh embeddings sinks_long
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false
if [ "$#" -gt 0 ]; then
  for name in "$@"; do .venv/bin/python "benchmarks/bench_${name}.py"; done
else
  for script in benchmarks/bench_*.py; do
    case "$script" in *gpu*) .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { echo "skip $script (no GPU)"; continue; } ;; esac
    echo "== $script"; .venv/bin/python "$script"
  done
fi
