#!/usr/bin/env bash
# Set up lmforge in ./.venv on a fresh machine: PyTorch 2.13 first, pinned (on these machines pip's config
# finds the CPU wheel on disk; a venv that already has a torch build, e.g. a CUDA one, keeps it), then
# lmforge with its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q -U pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  .venv/bin/python -m pip install -q "torch==2.13.0"
fi
.venv/bin/python -m pip install -q -e ".[dev]"
