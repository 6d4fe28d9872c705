#!/usr/bin/env bash
# Create .venv with everything resgen and its tests need (idempotent; fast when already done).
# The pinned CPU torch goes in first so the package's open torch range installs nothing more.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/pip install -q torch==2.13.0
fi
if ! .venv/bin/python -c "import resgen, pytest, xdist, hypothesis, cupy, matplotlib, transformers" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.resgen-installed ]; then
    .venv/bin/pip install -q -e ".[test,bench,hf]"
    touch .venv/.resgen-installed
fi
