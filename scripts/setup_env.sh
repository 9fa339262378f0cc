#!/usr/bin/env bash
# Create or update the project's virtual environment and install gfcore into it.
# Idempotent: a second run reuses the environment and rebuilds only what changed.
#   VENV=path            where the environment lives (default .venv)
#   GFCORE_CUDA=auto|0|1 auto: a CUDA build of torch and the CUDA kernels when nvcc exists
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$(cd "$VENV/bin" && pwd)/python"

want_cuda=0
if [ "${GFCORE_CUDA:-auto}" != "0" ] && { command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  want_cuda=1
fi

if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ "$want_cuda" = 1 ]; then
    echo "setup: installing a CUDA build of torch (nvcc found, so the CUDA kernels get compiled)"
    "$PY" -m pip install -q torch
  else
    echo "setup: installing the CPU build of torch"
    "$PY" -m pip install -q torch==2.13.0
  fi
fi
# Lines of requirements-dev.txt marked "no-deps" (lpips: the LPIPS reference in the tests,
# whose own requirements would pull torchvision and with it another torch) go in with --no-deps.
"$PY" -m pip install -q -r <(grep -v '^[^#].*# no-deps' requirements-dev.txt)
"$PY" -m pip install -q --no-deps $(grep '^[^#].*# no-deps' requirements-dev.txt | sed 's/#.*//')
# --no-build-isolation: build against the torch just installed (an isolated build would
# fetch another torch, with a different ABI).
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation .
# From outside the checkout, so that the installed package is the one imported.
(cd / && "$PY" -c "import gfcore; print('setup: gfcore', gfcore.__version__, 'backends', gfcore.backends())")
