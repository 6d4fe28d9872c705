#!/usr/bin/env bash
# The GPU check: one device call (budget ~8 minutes on an H200), using the machine's own python3.
# 1. the tests marked `gpu` (every catalog block x dtype x hidden on the cuda backend, in-place and
#    strided I/O, CUDA-graph capture, two streams, modules); 2. a short benchmark: resgen vs torch
#    eager vs torch.compile, bf16, rows 32768, hidden 2048..16384, as GB/s and as a fraction of a
#    device-to-device copy measured in the same run. Everything lands under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RESGEN_CACHE_DIR=${RESGEN_CACHE_DIR:-/tmp/resgen-cache}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$PY" -c "import sys, torch, cupy; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cupy', cupy.__version__)"
} 2>&1 | tee "$OUT/env.log"

# A kernel that hangs must not eat the device budget: per-test and overall time limits.
per_test=""
"$PY" -c "import pytest_timeout" 2>/dev/null && per_test="--timeout 240"
timeout 330 "$PY" -m pytest -q -m gpu -n 4 -p no:cacheprovider $per_test tests/test_gpu.py 2>&1 | tee "$OUT/gpu_tests.log"
tests_rc=${PIPESTATUS[0]}

timeout 240 "$PY" -m resgen.cli bench llama,gpt2 --hidden 2048,4096,8192,16384 --rows 32768 --against torch,compile \
    --json "$OUT/bench.json" --plot "$OUT/bench.png" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

# Small-row latency: microseconds per call with host overhead (call_us), resgen vs torch eager.
timeout 60 "$PY" -m resgen.cli bench llama --hidden 4096 --rows 1,64 --against torch \
    --json "$OUT/latency.json" 2>&1 | tee "$OUT/latency.log"
latency_rc=${PIPESTATUS[0]}

echo "gpu tests exit ${tests_rc}, benchmark exit ${bench_rc}, latency exit ${latency_rc}" | tee -a "$OUT/env.log"
[ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$latency_rc" -eq 0 ]
