#!/usr/bin/env bash
# The GPU check: one device call, ending by ~480 s on an H200, with the machine's own python3.
#
#   1. env.log         versions, the GPU and driver, NVRTC's library and version, the CUDA header folders,
#                      whether resgen::run's kernels are C++ (built here on first import) or Python
#   2. gpu_tests.log   the `gpu`-marked tests (tests/test_gpu.py on the cuda backend); with
#                      RESGEN_REQUIRE_GPU=1 a test that would skip fails instead
#   3. bench.json/.png resgen vs torch eager vs torch.compile, bf16, rows 32768, hidden 2048..16384, as GB/s
#                      and as a fraction of a device copy measured in the same run (written record by record)
#   4. bench_grad.json training: the backward alone and forward+backward through torch autograd, resgen vs
#                      torch eager vs torch.compile, bf16, rows 32768, hidden 4096 and 16384
#   5. latency.json    rows 1 and 64 at hidden 4096: device time (CUDA-graph replay) and call_us (host included)
#   6. bench_quant.json the quantizing kernels (per-token fp8, MXFP8, NVFP4) vs torch eager, bf16, rows 32768,
#                      hidden 4096 and 16384: is quantization free (the same fraction of copy as llama's)?
#   7. stack.json      a Llama stack's residual adds and norms (4 layers, hidden 4096, bf16, 8192 rows):
#                      resgen's patched layers, eager and compiled, vs torch.compile of HF's code (target
#                      1.3x), and the host cost per call of the raw kernel, the module and the op
#
# Each stage has its own cap (timeout -k), and together they end by ~480 s, inside one 600 s device
# command. Tests run with -v and per-test limits (thread method: a thread stuck in a CUDA sync ignores
# signals), so a killed run still shows what passed; the benchmark keeps every record it finished.
#
#   scripts/gpu_check.sh --dry-run   the same stages without a device (CI runs this): the test bodies
#                                    on the emu backend, the benchmark's kernels built for emu, bytes
#                                    counted and JSON/plot written with a stubbed timer.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=""
if [ "${1:-}" = "--dry-run" ]; then DRY="--dry-run"; fi
OUT=${OUT:-$PWD/gpu-out}
PY=${PYTHON:-python3}
WORKERS=${GPU_CHECK_WORKERS:-4}
SELECT=${GPU_CHECK_SELECT:-}  # a pytest -k expression narrowing the test stage (CI's dry run uses one)
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export RESGEN_CACHE_DIR=${RESGEN_CACHE_DIR:-/tmp/resgen-cache}

# Stage caps in seconds (sum 445, plus 5 s of kill grace each: 480). The env stage's first import of
# resgen builds the op's C++ kernels (resgen.runtime.native, ~15 s on one core).
ENV_CAP=40 TESTS_CAP=160 BENCH_CAP=85 GRAD_CAP=70 LATENCY_CAP=25 QUANT_CAP=35 STACK_CAP=30
stage() {  # stage CAP LOG CMD...: run CMD under a hard cap, tee its output, return its status
    local cap=$1 log=$2
    shift 2
    timeout -k 5 "$cap" "$@" 2>&1 | tee "$OUT/$log"
    return "${PIPESTATUS[0]}"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "nvidia-smi: not available"
} >"$OUT/env.log" 2>&1
stage "$ENV_CAP" env-resgen.log "$PY" -m resgen.cli env
env_rc=$?
cat "$OUT/env-resgen.log" >>"$OUT/env.log" && rm -f "$OUT/env-resgen.log"

if [ -n "$DRY" ]; then
    marker="not gpu"  # the same test bodies, on the emu backend
else
    marker="gpu"
    export RESGEN_REQUIRE_GPU=1
fi
parallel=()
if [ "$WORKERS" -gt 1 ]; then parallel=(-n "$WORKERS"); fi
select=()
if [ -n "$SELECT" ]; then select=(-k "$SELECT"); fi
stage "$TESTS_CAP" gpu_tests.log "$PY" -m pytest -v -m "$marker" "${parallel[@]}" "${select[@]}" -p no:cacheprovider \
    --timeout 150 --timeout-method=thread tests/test_gpu.py
tests_rc=$?

stage "$BENCH_CAP" bench.log "$PY" -m resgen.cli bench llama,gpt2 --hidden 2048,4096,8192,16384 --rows 32768 \
    --against torch,compile --json "$OUT/bench.json" --plot "$OUT/bench.png" $DRY
bench_rc=$?

stage "$GRAD_CAP" bench_grad.log "$PY" -m resgen.cli bench llama,gpt2 --grad --hidden 4096,16384 --rows 32768 \
    --against torch,compile --json "$OUT/bench_grad.json" --plot "$OUT/bench_grad.png" $DRY
grad_rc=$?

stage "$LATENCY_CAP" latency.log "$PY" -m resgen.cli bench llama --hidden 4096 --rows 1,64 --against torch \
    --json "$OUT/latency.json" $DRY
latency_rc=$?

stage "$QUANT_CAP" bench_quant.log "$PY" -m resgen.cli bench llama_fp8_dynamic,llama_mxfp8,llama_nvfp4 \
    --hidden 4096,16384 --rows 32768 --against torch --json "$OUT/bench_quant.json" $DRY
quant_rc=$?

stage "$STACK_CAP" stack.log "$PY" -m resgen.tune.stack --hidden 4096 --rows 8192 --layers 4 \
    --json "$OUT/stack.json" $DRY
stack_rc=$?

echo "env exit ${env_rc}, gpu tests exit ${tests_rc}, benchmark exit ${bench_rc}, training benchmark exit" \
    "${grad_rc}, latency exit ${latency_rc}, quantizing benchmark exit ${quant_rc}, stack exit ${stack_rc}" \
    | tee -a "$OUT/env.log"
[ "$env_rc" -eq 0 ] && [ "$tests_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ] && [ "$grad_rc" -eq 0 ] && [ "$latency_rc" -eq 0 ] \
    && [ "$quant_rc" -eq 0 ] && [ "$stack_rc" -eq 0 ]
