#!/usr/bin/env bash
# Configure, build and run the C++ library and its unit test against the given Python's torch.
#   bash scripts/build_cpp.sh [python]      (CPU kernels; -DGFCORE_WITH_CUDA=ON adds CUDA by hand)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
bin=$(cd "$(dirname "$(command -v "$PY")")" && pwd)
prefix=$("$PY" -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake="$bin/cmake"; [ -x "$cmake" ] || cmake=cmake
ctest="$bin/ctest"; [ -x "$ctest" ] || ctest=ctest
args=(-G Ninja -DCMAKE_MAKE_PROGRAM="$bin/ninja")
# A CUDA build of torch makes find_package(Torch) look for CUDA: point it at the toolkit and
# at the CUDA libraries that pip installed beside torch (a minimal toolkit lacks some).
nvidia=$("$PY" - <<'PYEOF'
import glob, importlib.util, os, torch
if torch.version.cuda:
    spec = importlib.util.find_spec("nvidia")
    for base in (spec.submodule_search_locations if spec else []):
        for lib in glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")):
            print(os.path.dirname(os.path.dirname(lib)), lib)
            raise SystemExit
PYEOF
)
if [ -n "$nvidia" ]; then
  read -r nvidia_root nvrtc <<< "$nvidia"
  toolkit=${CUDA_HOME:-/usr/local/cuda}
  prefix="$prefix;$nvidia_root"
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$toolkit" -DCUDAToolkit_ROOT="$toolkit" -DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
"$cmake" -S . -B build-cmake "${args[@]}" -DCMAKE_PREFIX_PATH="$prefix" >/dev/null
"$cmake" --build build-cmake -j "${MAX_JOBS:-2}"
"$ctest" --test-dir build-cmake --output-on-failure
