#!/usr/bin/env bash
# Set up lmforge in ./.venv on a fresh machine: the CPU build of PyTorch first (a plain `torch` would pull
# the multi-GB CUDA build; a machine that already has a GPU build keeps it), then lmforge with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
