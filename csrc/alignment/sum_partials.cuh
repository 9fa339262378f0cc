// Column sums of per-block partial results: the second, deterministic stage of every
// bias-gradient reduction (no atomics, so results repeat bit for bit). Included by
// sum_partials.cu alone (and the harness), so the kernel has one definition.
#pragma once

#include "common/cuda_compat.cuh"

namespace gfcore {
namespace alignment {

// out[c] = sum over g of partial[g][c]: a block of 32 columns x 32 row slices, then a
// shared-memory reduction over the slices.
__global__ void sum_partials_kernel(const float* __restrict__ partial, float* __restrict__ out, int64_t groups,
                                    int64_t cols) {
  GFCORE_SHARED(float, slice_sums, [32][33]);  // +1 column: no bank conflicts on the transposed read
  const int64_t col = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float sum = 0.f;
  if (col < cols) {
    for (int64_t g = threadIdx.y; g < groups; g += 32) sum += partial[g * cols + col];
  }
  slice_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float total = 0.f;
#pragma unroll 8
    for (int s = 0; s < 32; ++s) total += slice_sums[s][threadIdx.x];
    out[col] = total;
  }
}

inline LaunchConfig sum_partials_config(int64_t cols) {
  return {dim3(static_cast<unsigned>(ceil_div(cols, 32))), dim3(32, 32), 0};
}

// out[cols] = column sums of partial[groups, cols] (float32); nothing to do for cols == 0.
inline cudaError_t launch_sum_partials(const float* partial, float* out, int64_t groups, int64_t cols,
                                       cudaStream_t stream) {
  if (cols == 0) return cudaSuccess;
  return launch_kernel(sum_partials_kernel, sum_partials_config(cols), stream, partial, out, groups, cols);
}

}  // namespace alignment
}  // namespace gfcore
