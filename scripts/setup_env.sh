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

# torch is pinned to the versions gfcore is built and tested with: the extension is compiled
# against torch's C++ headers and ABI and uses private dispatcher APIs, so an unpinned install
# would build and test against whatever torch was newest that day. The two paths pin different
# versions because each is the one used on that path so far: the CUDA build from PyPI that
# an unpinned `make setup` resolved to and built gfcore against (2.14.1+cu130, for CUDA 13.0
# like the nvcc used) and the CPU wheel (2.13.0+cpu) that the CPU benchmarks in
# benchmarks/results/ ran with. Change a pin only together with a full `make test` on it.
# TORCH_VERSION=X installs that torch instead (PyPI's build of it): `make test-torch-min` uses it
# for the oldest supported torch (gfcore/torch_support.py states the range).
TORCH_CUDA_VERSION=2.14.1
TORCH_CPU_VERSION=2.13.0
if ! "$PY" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_VERSION:-}" ]; then
    echo "setup: installing torch $TORCH_VERSION (TORCH_VERSION)"
    "$PY" -m pip install -q "torch==$TORCH_VERSION"
  elif [ "$want_cuda" = 1 ]; then
    echo "setup: installing a CUDA build of torch $TORCH_CUDA_VERSION (nvcc found, so the CUDA kernels get compiled)"
    "$PY" -m pip install -q "torch==$TORCH_CUDA_VERSION"
  else
    echo "setup: installing the CPU build of torch $TORCH_CPU_VERSION"
    "$PY" -m pip install -q "torch==$TORCH_CPU_VERSION"
  fi
fi
# An existing environment keeps its torch; say so when it is not a pinned one.
have_torch=$("$PY" -c "import torch; print(torch.__version__)")
case "$have_torch" in
  "${TORCH_VERSION:-none}" | "${TORCH_VERSION:-none}"+*) ;;
  "$TORCH_CUDA_VERSION" | "$TORCH_CUDA_VERSION"+* | "$TORCH_CPU_VERSION" | "$TORCH_CPU_VERSION"+*) ;;
  *) echo "setup: note: $VENV has torch $have_torch, not a tested one" \
          "($TORCH_CUDA_VERSION CUDA, $TORCH_CPU_VERSION CPU)" ;;
esac
# Lines of requirements-dev.txt marked "no-deps" (lpips: the LPIPS reference in the tests,
# whose own requirements would pull torchvision and with it another torch) go in with --no-deps.
# The installed torch is a constraint: timm needs torchvision, whose every release pins one torch,
# and without the constraint pip would replace this torch with the newest torchvision's.
torch_pin="torch==${have_torch%%+*}"
"$PY" -m pip install -q -r <(grep -v '^[^#].*# no-deps' requirements-dev.txt) -c <(echo "$torch_pin")
"$PY" -m pip install -q --no-deps $(grep '^[^#].*# no-deps' requirements-dev.txt | sed 's/#.*//')
# The build uses setuptools' own bdist_wheel (setuptools >= 70.1); torch 2.14 brings such a
# setuptools, torch 2.11 none (and it asks for setuptools < 82), and a new venv's is older.
"$PY" -m pip install -q "setuptools>=70.1,<82"
# --no-build-isolation: build against the torch just installed (an isolated build would
# fetch another torch, with a different ABI).
# [train,eval,demo]: everything (a bare `pip install .` brings only what the loss needs).
MAX_JOBS=${MAX_JOBS:-2} "$PY" -m pip install -q --no-build-isolation ".[train,eval,demo]" -c <(echo "$torch_pin")
# From outside the checkout, so that the installed package is the one imported.
(cd / && "$PY" -c "import gfcore; print('setup: gfcore', gfcore.__version__, 'backends', gfcore.backends())")
