// CUDA kernels of gfcore::bias_silu and gfcore::bias_silu_backward.
//
// Forward: one read of x, one write of silu(x + bias): elementwise over 16-byte packs.
// Backward: one read of grad and x, one write of grad_x, and the bias gradient (column sums
// of grad_x) accumulated in registers while the rows stream past: each thread owns one pack
// of columns and walks a group of rows; per-group partial sums go through sum_partials.
#include <torch/library.h>

#include "alignment/alignment_checks.h"
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {
namespace {

template <typename T, int VEC>
__global__ void bias_silu_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ out,
                                 int64_t packs, int64_t packs_per_row) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < packs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const auto xv = load_pack<T, VEC>(x + i * VEC);
    const auto bv = load_pack<T, VEC>(bias + (i % packs_per_row) * VEC);
    Pack<T, VEC> ov;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(xv.v[j]) + to_float(bv.v[j]);
      ov.v[j] = from_float<T>(a * sigmoidf(a));
    }
    store_pack(out + i * VEC, ov);
  }
}

template <typename T, int VEC>
__global__ void bias_silu_backward_kernel(const T* __restrict__ grad, const T* __restrict__ x,
                                          const T* __restrict__ bias, T* __restrict__ grad_x,
                                          float* __restrict__ partial, int64_t rows, int64_t cols,
                                          int64_t rows_per_group) {
  const int64_t col = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * VEC;
  if (col >= cols) return;
  const int64_t row_begin = blockIdx.y * rows_per_group;
  const int64_t row_end = min(rows, row_begin + rows_per_group);
  const auto bv = load_pack<T, VEC>(bias + col);
  float colsum[VEC] = {};
#pragma unroll 4
  for (int64_t r = row_begin; r < row_end; ++r) {
    const auto gv = load_pack<T, VEC>(grad + r * cols + col);
    const auto xv = load_pack<T, VEC>(x + r * cols + col);
    Pack<T, VEC> ov;
#pragma unroll
    for (int j = 0; j < VEC; ++j) {
      const float a = to_float(xv.v[j]) + to_float(bv.v[j]);
      const float s = sigmoidf(a);
      const float g = to_float(gv.v[j]) * s * (1.f + a * (1.f - s));
      ov.v[j] = from_float<T>(g);
      colsum[j] += g;
    }
    store_pack(grad_x + r * cols + col, ov);
  }
#pragma unroll
  for (int j = 0; j < VEC; ++j) partial[blockIdx.y * cols + col + j] = colsum[j];
}

at::Tensor bias_silu_cuda(const at::Tensor& x, const at::Tensor& bias) {
  check_bias_silu_args(x, bias);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  if (x.numel() == 0) return out;
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_silu_cuda", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* bp = bias.const_data_ptr<scalar_t>();
    auto* op = out.mutable_data_ptr<scalar_t>();
    const int64_t cols = x.size(1);
    auto launch = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const int64_t packs = x.numel() / VEC;
      const int threads = 256;
      const int64_t blocks = std::min<int64_t>(ceil_div(packs, threads), int64_t(num_sms()) * 16);
      bias_silu_kernel<scalar_t, VEC><<<blocks, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          xp, bp, op, packs, cols / VEC);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (pack_width<scalar_t>(cols, {xp, bp, op}) > 1)
      launch(std::integral_constant<int, 16 / sizeof(scalar_t)>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_silu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& bias) {
  check_bias_silu_backward_args(grad_out, x, bias);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty_like(x);
  const int64_t rows = x.size(0), cols = x.size(1);
  // Empty x: nothing to launch (cols == 0 would also make column_pack_grid divide by zero).
  if (x.numel() == 0) return {grad_x, at::zeros({cols}, x.options().dtype(at::kFloat))};
  at::Tensor partial;
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_silu_backward_cuda", [&] {
    const auto* gp = grad_out.const_data_ptr<scalar_t>();
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* bp = bias.const_data_ptr<scalar_t>();
    auto* gxp = grad_x.mutable_data_ptr<scalar_t>();
    auto launch = [&](auto vec_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      const auto g = column_pack_grid(rows, cols, VEC, 256);
      partial = at::empty({g.groups, cols}, x.options().dtype(at::kFloat));
      const dim3 grid(static_cast<unsigned>(g.col_blocks), static_cast<unsigned>(g.groups));
      bias_silu_backward_kernel<scalar_t, VEC><<<grid, g.threads, 0, at::cuda::getCurrentCUDAStream()>>>(
          gp, xp, bp, gxp, partial.mutable_data_ptr<float>(), rows, cols, g.rows_per_group);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    if (pack_width<scalar_t>(cols, {gp, xp, bp, gxp}) > 1)
      launch(std::integral_constant<int, 16 / sizeof(scalar_t)>{});
    else
      launch(std::integral_constant<int, 1>{});
  });
  return {grad_x, sum_partials(partial)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("bias_silu", &bias_silu_cuda);
  m.impl("bias_silu_backward", &bias_silu_backward_cuda);
}

}  // namespace alignment
}  // namespace gfcore
