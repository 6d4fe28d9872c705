#!/usr/bin/env bash
# The main job: show the Llama block lowered for hidden 4096.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/resgen ir llama --hidden 4096 --lower
