#!/usr/bin/env bash
# On a lent GPU machine: build the CUDA extension, run the given tests and benchmarks.
#   bash scripts/gpu_check.sh ["<pytest paths>"] ["<benchmark module args; ...>"]
# With no arguments: every CUDA test file, then the GPU benchmarks of the loss, the attention
# and the VGGT teacher (split them over several calls if one call's time limit is short).
# Logs and result files go to $OUT (the device tool brings them back) when it is set; commit
# the JSON it copies there under benchmarks/results/.
set -uo pipefail
OUT=${OUT:-/tmp/gfcore-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/device.txt"
start=$(date +%s)
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=16 GFCORE_CUDA=1 python3 setup.py build_ext --inplace \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s" | tee -a "$OUT/device.txt"
python3 -c "import gfcore; print('backends', gfcore.backends())" | tee -a "$OUT/device.txt"
TESTS=${1:-python_tests/test_alignment_cuda.py python_tests/test_attention_cuda.py python_tests/test_geometry_teacher.py}
BENCH_LIST=${2-benchmarks.bench_alignment_loss --device cuda;benchmarks.bench_attention --device cuda;benchmarks.bench_vggt_teacher --device cuda --config vggt1b}
python3 -m pytest $TESTS -q -ra -p no:cacheprovider 2>&1 | tee "$OUT/tests.log" | tail -25
IFS=';' read -ra BENCHES <<< "$BENCH_LIST"
for bench in "${BENCHES[@]}"; do
  [ -n "$bench" ] || continue
  echo "== python3 -m $bench"
  python3 -m $bench 2>&1 | tee -a "$OUT/bench.log" | tail -60
done
cp benchmarks/results/*cuda* "$OUT/" 2>/dev/null || true
