#!/usr/bin/env bash
# On a lent GPU machine (see DEVELOPERS.md: one call <= 10 minutes, 15 minutes of GPU time in
# all, <= 8 result files). Two steps, one device call each, each meant to finish in < 6 minutes:
#
#   bash scripts/gpu_check.sh build-test   # build for the GPU; the CUDA tests; the kernel harness
#                                          # compiled by nvcc (parity with the CPU emulation);
#                                          # compute-sanitizer memcheck/racecheck/synccheck on a subset
#   bash scripts/gpu_check.sh bench        # the GPU benchmarks of the loss, the attention, VGGT
#
# Logs and results go to $OUT (the device tool brings them back): build-test writes device.txt,
# build.log, tests_cpu.log, tests.log, any_batch.log, harness_gpu.log, sanitizer.log; bench writes device.txt, build.log,
# bench.log and results_cuda.tar.gz, the benchmarks' *cuda* JSON/markdown and the attention
# dispatch table attention_dispatch_sm<XY>.json that impl="auto" follows (unpack and commit
# them under benchmarks/results/). Wheels the
# machine lacks (nvtx) go in .whl/ and are installed from there (no network there).
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:-}
case "$STEP" in build-test|bench) ;; *) echo "usage: $0 build-test|bench" >&2; exit 2 ;; esac
OUT=${OUT:-/tmp/gfcore-gpu}
mkdir -p "$OUT"
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*" | tee -a "$OUT/device.txt"; }

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv | tee "$OUT/device.txt"
# The torch this ran with (gfcore supports the range in gfcore/torch_support.py; CI tests its ends).
python3 -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)" \
  | tee -a "$OUT/device.txt"
git rev-parse HEAD 2>/dev/null | sed 's/^/commit /' | tee -a "$OUT/device.txt"
cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d ' ')
arch=sm_${cap/./}

# The extension, in place, for this GPU only (incremental if the machine is still warm).
TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap} MAX_JOBS=16 GFCORE_CUDA=1 python3 setup.py build_ext --inplace \
  > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
stamp "extension built for $arch"
python3 -c "import gfcore; print('backends', gfcore.backends())" | tee -a "$OUT/device.txt"

if [ "$STEP" = build-test ]; then
  # First the CPU tests of the ops and the loss, with the GPU hidden, on this machine's torch: a
  # failure there is a torch-version difference, not to be read as a kernel failure below.
  CUDA_VISIBLE_DEVICES= timeout 180 python3 -m pytest python_tests/test_torch_support.py \
    python_tests/test_alignment_loss.py python_tests/test_alignment_ops.py python_tests/test_attention_cpu.py \
    -q -ra -p no:cacheprovider > "$OUT/tests_cpu.log" 2>&1
  stamp "pytest, CPU only: $(tail -1 "$OUT/tests_cpu.log")"
  python3 -m pytest python_tests/test_alignment_cuda.py python_tests/test_attention_cuda.py \
    python_tests/test_geometry_teacher.py -q -ra -p no:cacheprovider > "$OUT/tests.log" 2>&1
  stamp "pytest: $(tail -1 "$OUT/tests.log")"
  # Temporal attention past SDPA's batch limit and 2^31 elements (fused and reference).
  timeout 150 python3 scripts/any_batch_check.py > "$OUT/any_batch.log" 2>&1
  stamp "any batch: $(tail -1 "$OUT/any_batch.log")"
  # The harness cases of cpp_tests/kernels on the GPU: same sources, launch functions and float64
  # references as on the CPU, so a difference here is the emulation's (fragment layouts, ...).
  make -s -C cpp_tests/kernels gpu GPU_ARCH="$arch" NVCC="${NVCC:-nvcc}" > "$OUT/harness_gpu.log" 2>&1
  bin=build/kernel-harness-gpu/kernel_tests_gpu
  timeout 240 "$bin" >> "$OUT/harness_gpu.log" 2>&1
  stamp "harness on the GPU: $(tail -1 "$OUT/harness_gpu.log")"
  # compute-sanitizer on a few cases that cover every kernel family (a tail, RoPE, causal).
  for tool in memcheck racecheck synccheck; do
    for filter in "bias_normalize_cosine/bf16/37x19" "bias_mse/fp16/300x40" "spatial/bf16/B1T1P70H1D128/rope" \
                  "temporal/fp16/B1T33P2H1D128/causal/rope" "temporal/bf16/B1T8P3H3D32/causal/rope" \
                  "temporal/bf16/B1T70P2H1D64/causal/rope"; do
      echo "== $tool $filter" >> "$OUT/sanitizer.log"
      timeout 120 compute-sanitizer --tool "$tool" --error-exitcode 9 "$bin" --filter "$filter" \
        >> "$OUT/sanitizer.log" 2>&1
      echo "exit $?" >> "$OUT/sanitizer.log"
    done
  done
  stamp "compute-sanitizer: $(grep -c '^exit 0' "$OUT/sanitizer.log") of $(grep -c '^exit' "$OUT/sanitizer.log") runs clean"
else
  # bench_attention stops measuring at its own --budget-s (115 s) and still writes its files.
  for bench in "benchmarks.bench_alignment_loss --device cuda" \
               "benchmarks.bench_attention --device cuda --write-dispatch-table" \
               "benchmarks.bench_vggt_teacher --device cuda --config vggt1b"; do
    echo "== python3 -m $bench" >> "$OUT/bench.log"
    timeout 150 python3 -m $bench >> "$OUT/bench.log" 2>&1
    stamp "$bench: exit $?"
  done
  # One archive, so the step stays within the 8 files a call may bring back.
  tar czf "$OUT/results_cuda.tar.gz" benchmarks/results/*cuda* benchmarks/results/attention_dispatch_sm*.json \
    2>/dev/null || true
fi
stamp "done"
