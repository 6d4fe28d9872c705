#!/usr/bin/env bash
# The main job: generate, compile and verify the Llama pre-norm block (add + RMSNorm, bf16,
# hidden 4096) against the PyTorch reference: on the GPU when one is usable, else on the emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/resgen verify llama --hidden 4096 --rows 64 "$@"
