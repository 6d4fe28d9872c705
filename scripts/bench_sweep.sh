#!/usr/bin/env bash
# The full benchmark sweep (one device call, about 8 minutes on an H200, the machine's python3):
# resgen vs torch eager vs torch.compile (and Liger when importable) for pre-norm add + RMSNorm and
# add + LayerNorm, bf16, hidden 1024..65536 and 262144, rows 1, 64, 4096, 32768. Liger can travel
# as wheels in .whl/ (see benchmarks/README.md). Writes sweep.json, sweep.png and logs under $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/bench-out}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RESGEN_CACHE_DIR=${RESGEN_CACHE_DIR:-/tmp/resgen-cache}

nvidia-smi --query-gpu=name,driver_version --format=csv 2>&1 | tee "$OUT/env.log"
"$PY" -m resgen.cli bench llama,gpt2 --hidden 1024,2048,4096,8192,16384,32768,65536,262144 \
    --rows 1,64,4096,32768 --against torch,compile,liger \
    --json "$OUT/sweep.json" --plot "$OUT/sweep.png" 2>&1 | tee "$OUT/sweep.log"
exit "${PIPESTATUS[0]}"
