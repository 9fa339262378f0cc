// Column sums of per-block partial results: the second, deterministic stage of every
// bias-gradient reduction (no atomics, so results repeat bit for bit).
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {

__global__ void sum_partials_kernel(const float* __restrict__ partial, float* __restrict__ out, int64_t groups,
                                    int64_t cols) {
  __shared__ float slice_sums[32][33];  // +1 column: no bank conflicts on the transposed read
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

at::Tensor sum_partials(const at::Tensor& partial) {
  const int64_t groups = partial.size(0), cols = partial.size(1);
  auto out = at::empty({cols}, partial.options());
  if (cols == 0) return out;
  const dim3 block(32, 32);
  const dim3 grid(static_cast<unsigned>(ceil_div(cols, 32)));
  sum_partials_kernel<<<grid, block, 0, at::cuda::getCurrentCUDAStream()>>>(
      partial.const_data_ptr<float>(), out.mutable_data_ptr<float>(), groups, cols);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace alignment
}  // namespace gfcore
