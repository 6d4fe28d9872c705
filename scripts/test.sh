#!/usr/bin/env bash
# The test command: lint, then the whole CPU suite (GPU tests skip themselves without a device).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check resgen tests scripts
.venv/bin/python -m pytest -q -n auto "$@"
