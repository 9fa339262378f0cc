// CUDA kernel of gfcore::bias_mse: diff = x + bias - y written once, with its column sums
// (the bias gradient up to a scale) and the sum of squares (the loss) reduced on the way.
// Layout as in bias_silu_backward: each thread owns one pack of columns and walks a group
// of rows; partial sums per row group, then a deterministic second stage.
#include <torch/library.h>

#include "alignment/alignment_checks.h"
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {
namespace {

constexpr int kMaxThreads = 256;

template <typename T, int VEC>
__global__ void __launch_bounds__(kMaxThreads)
    bias_mse_kernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ y,
                    T* __restrict__ diff, float* __restrict__ partial_colsum, float* __restrict__ partial_squares,
                    int64_t rows, int64_t cols, int64_t rows_per_group) {
  __shared__ float warp_squares[kMaxThreads / kWarp];
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  float squares = 0.f;
  if (col < cols) {
    const int64_t row_begin = blockIdx.y * rows_per_group;
    const int64_t row_end = min(rows, row_begin + rows_per_group);
    const auto bv = load_pack<T, VEC>(bias + col);
    float colsum[VEC] = {};
#pragma unroll 4
    for (int64_t r = row_begin; r < row_end; ++r) {
      const auto xv = load_pack<T, VEC>(x + r * cols + col);
      const auto yv = load_pack<T, VEC>(y + r * cols + col);
      Pack<T, VEC> dv;
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        const float d = to_float(xv.v[j]) + to_float(bv.v[j]) - to_float(yv.v[j]);
        dv.v[j] = from_float<T>(d);
        colsum[j] += d;
        squares += d * d;
      }
      store_pack(diff + r * cols + col, dv);
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) partial_colsum[blockIdx.y * cols + col + j] = colsum[j];
  }
  squares = warp_sum(squares);
  if (threadIdx.x % kWarp == 0) warp_squares[threadIdx.x / kWarp] = squares;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0.f;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarp; ++w) total += warp_squares[w];
    partial_squares[blockIdx.y * gridDim.x + blockIdx.x] = total;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_mse_cuda(const at::Tensor& x, const at::Tensor& bias,
                                                             const at::Tensor& y) {
  check_bias_mse_args(x, bias, y);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  auto diff = at::empty_like(x);
  at::Tensor partial_colsum, partial_squares;
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_mse_cuda", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* bp = bias.const_data_ptr<scalar_t>();
    const auto* yp = y.const_data_ptr<scalar_t>();
    auto* dp = diff.mutable_data_ptr<scalar_t>();
    auto launch = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const auto g = column_pack_grid(rows, cols, VEC, kMaxThreads);
      partial_colsum = at::empty({g.groups, cols}, x.options().dtype(at::kFloat));
      partial_squares = at::empty({g.groups * g.col_blocks}, x.options().dtype(at::kFloat));
      const dim3 grid(static_cast<unsigned>(g.col_blocks), static_cast<unsigned>(g.groups));
      bias_mse_kernel<scalar_t, VEC><<<grid, g.threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          xp, bp, yp, dp, partial_colsum.mutable_data_ptr<float>(), partial_squares.mutable_data_ptr<float>(), rows,
          cols, g.rows_per_group);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (pack_width<scalar_t>(cols, {xp, bp, yp, dp}) > 1)
      launch(std::integral_constant<int, 16 / sizeof(scalar_t)>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  auto loss = partial_squares.sum().div_(static_cast<double>(x.numel()));
  return {loss, diff, sum_partials(partial_colsum)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) { m.impl("bias_mse", &bias_mse_cuda); }

}  // namespace alignment
}  // namespace gfcore
