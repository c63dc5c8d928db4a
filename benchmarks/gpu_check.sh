#!/usr/bin/env bash
# One GPU check for a lent machine (issue 19): the GPU tests, then the analysis-cost benchmark on the 7B-class
# Llama configuration. Run from the repository root on a bare machine with Python 3.12, an NVIDIA driver and the
# image's torch + transformers (nothing is installed: such machines reach no package index):
#
#     bash benchmarks/gpu_check.sh            # results into $OUT (default ./gpu_out)
#
# Writes into $OUT: env.txt (versions, GPU), gpu_tests.log and gpu_tests.xml (pytest tests/gpu),
# analysis_cost_cuda.json (benchmarks/bench_analysis_cost.py --device cuda --llama7b --T 2048 8192) and
# bench.log. Each step has its own time limit; the whole script stays under 8 minutes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
start=$(date +%s)

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi failed"
    "$PY" - <<'EOF'
import sys
print("python", sys.version.split()[0])
for name in ("torch", "transformers", "triton", "numpy", "pytest", "hypothesis"):
    try:
        mod = __import__(name)
        print(name, getattr(mod, "__version__", "?"))
    except Exception as exc:  # noqa: BLE001
        print(name, "MISSING", exc)
import torch
print("cuda available", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
} 2>&1 | tee "$OUT/env.txt"

# GPU tests: tests/conftest.py needs Redis and the browser (not on that machine), so it is not loaded.
echo "== tests/gpu" | tee "$OUT/gpu_tests.log"
timeout 240 "$PY" -m pytest --noconftest -p no:cacheprovider -q -ra tests/gpu tests/unit/test_fused_metrics.py \
    --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee -a "$OUT/gpu_tests.log"
echo "tests rc=${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu_tests.log"

# Benchmark: plain SDPA vs capture vs capture + metric reducers vs fused metrics, T = 2048 and 8192.
left=$(( 450 - ($(date +%s) - start) ))
(( left < 60 )) && left=60
echo "== bench_analysis_cost (limit ${left} s)" | tee "$OUT/bench.log"
timeout "$left" "$PY" benchmarks/bench_analysis_cost.py --device cuda --llama7b --T 2048 8192 --chunk 1024 \
    --repeats 3 --out "$OUT/analysis_cost_cuda.json" 2>&1 | tee -a "$OUT/bench.log"
echo "bench rc=${PIPESTATUS[0]} after $(( $(date +%s) - start )) s" | tee -a "$OUT/bench.log"
ls -la "$OUT"
