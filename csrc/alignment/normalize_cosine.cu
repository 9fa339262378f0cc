// CUDA kernels of gfcore::bias_normalize_cosine and its backward.
//
// One warp per row; each lane holds its packs of the row in registers (lane l owns packs
// l, l + 32, ..., up to PACKS_PER_LANE of them), so every row is read from memory once:
//   forward:  read x, y; write zhat (and 12 bytes of per-row statistics)
//   backward: read grad_zhat, zhat, y; write grad_x; the bias gradient (column sums) is kept
//             per lane in registers across the warp's rows, then summed over the block's
//             warps in shared memory into one partial row per block (see sum_partials).
#include <torch/library.h>

#include "alignment/alignment_checks.h"
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {
namespace {

constexpr int kWarpsPerBlock = 4;
constexpr int kMaxPacksPerLane = 16;

template <typename T, int VEC, int PPL>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    normalize_cosine_kernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ y,
                            T* __restrict__ zhat, float* __restrict__ cos, float* __restrict__ norms, int64_t rows,
                            int64_t cols, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t packs = cols / VEC;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp; r < rows;
       r += warp_stride) {
    Pack<T, VEC> xv[PPL], yv[PPL];
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int64_t p = lane + k * kWarp;
      if (p < packs) {
        xv[k] = load_pack<T, VEC>(x + r * cols + p * VEC);
        yv[k] = load_pack<T, VEC>(y + r * cols + p * VEC);
      }
    }
    float zz = 0.f, yy = 0.f, zy = 0.f;
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int64_t p = lane + k * kWarp;
      if (p < packs) {
        const auto bv = load_pack<T, VEC>(bias + p * VEC);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float z = to_float(xv[k].v[j]) + to_float(bv.v[j]);
          const float v = to_float(yv[k].v[j]);
          zz += z * z;
          yy += v * v;
          zy += z * v;
        }
      }
    }
    zz = warp_sum(zz);
    yy = warp_sum(yy);
    zy = warp_sum(zy);
    const float nz = sqrtf(zz), ny = sqrtf(yy);
    const float rz = 1.f / fmaxf(nz, eps), ry = 1.f / fmaxf(ny, eps);
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int64_t p = lane + k * kWarp;
      if (p < packs) {
        const auto bv = load_pack<T, VEC>(bias + p * VEC);
        Pack<T, VEC> ov;
#pragma unroll
        for (int j = 0; j < VEC; ++j) ov.v[j] = from_float<T>((to_float(xv[k].v[j]) + to_float(bv.v[j])) * rz);
        store_pack(zhat + r * cols + p * VEC, ov);
      }
    }
    if (lane == 0) {
      cos[r] = zy * rz * ry;
      norms[2 * r] = nz;
      norms[2 * r + 1] = ny;
    }
  }
}

template <typename T, int VEC, int PPL>
__global__ void __launch_bounds__(kWarpsPerBlock * kWarp)
    normalize_cosine_backward_kernel(const T* __restrict__ grad_zhat, const float* __restrict__ grad_cos,
                                     const T* __restrict__ zhat, const T* __restrict__ y,
                                     const float* __restrict__ cos, const float* __restrict__ norms,
                                     T* __restrict__ grad_x, float* __restrict__ partial, int64_t rows, int64_t cols,
                                     float eps) {
  extern __shared__ float warp_colsums[];  // [kWarpsPerBlock][cols]
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t packs = cols / VEC;
  float colsum[PPL][VEC];
#pragma unroll
  for (int k = 0; k < PPL; ++k)
#pragma unroll
    for (int j = 0; j < VEC; ++j) colsum[k][j] = 0.f;

  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp; r < rows; r += warp_stride) {
    Pack<T, VEC> gv[PPL], zv[PPL], yv[PPL];
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int64_t p = lane + k * kWarp;
      if (p < packs) {
        gv[k] = load_pack<T, VEC>(grad_zhat + r * cols + p * VEC);
        zv[k] = load_pack<T, VEC>(zhat + r * cols + p * VEC);
        yv[k] = load_pack<T, VEC>(y + r * cols + p * VEC);
      }
    }
    float zg = 0.f;
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int64_t p = lane + k * kWarp;
      if (p < packs) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) zg += to_float(zv[k].v[j]) * to_float(gv[k].v[j]);
      }
    }
    zg = warp_sum(zg);
    // Same algebra as the reference: a clamped |z| is a constant, so its terms vanish.
    const float nz = norms[2 * r];
    const float live = nz > eps ? 1.f : 0.f;
    const float rz = 1.f / fmaxf(nz, eps);
    const float ry = 1.f / fmaxf(norms[2 * r + 1], eps);
    const float gc = grad_cos[r];
    const float zcoef = live * (zg + gc * cos[r]);
    const float ycoef = gc * ry;
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int64_t p = lane + k * kWarp;
      if (p < packs) {
        Pack<T, VEC> ov;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float g = rz * (to_float(gv[k].v[j]) - zcoef * to_float(zv[k].v[j]) + ycoef * to_float(yv[k].v[j]));
          ov.v[j] = from_float<T>(g);
          colsum[k][j] += g;
        }
        store_pack(grad_x + r * cols + p * VEC, ov);
      }
    }
  }
  // Column sums: this warp's registers -> shared memory -> one partial row per block.
#pragma unroll
  for (int k = 0; k < PPL; ++k) {
    const int64_t p = lane + k * kWarp;
    if (p < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) warp_colsums[warp * cols + p * VEC + j] = colsum[k][j];
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float total = 0.f;
#pragma unroll
    for (int w = 0; w < kWarpsPerBlock; ++w) total += warp_colsums[w * cols + c];
    partial[blockIdx.x * cols + c] = total;
  }
}

// Calls launch(vec_tag, packs_per_lane_tag) with the pack width and the smallest packs-per-lane
// count (1, 2, 4, 8 or 16) that covers a row of `cols` values.
template <typename T, typename Launch>
void dispatch_row_layout(int64_t cols, int vec, const Launch& launch) {
  const int64_t packs = cols / vec;
  const int64_t needed = ceil_div(packs, kWarp);
  TORCH_CHECK(needed <= kMaxPacksPerLane, "the CUDA normalize/cosine kernels hold a row in registers: rows of at most ",
              kMaxPacksPerLane * kWarp * vec, " values are supported for this dtype and alignment, got ", cols,
              " (use impl='reference' for wider targets)");
  auto with_vec = [&](auto vec_tag) {
    if (needed <= 1) return launch(vec_tag, std::integral_constant<int, 1>{});
    if (needed <= 2) return launch(vec_tag, std::integral_constant<int, 2>{});
    if (needed <= 4) return launch(vec_tag, std::integral_constant<int, 4>{});
    if (needed <= 8) return launch(vec_tag, std::integral_constant<int, 8>{});
    return launch(vec_tag, std::integral_constant<int, 16>{});
  };
  if (vec > 1)
    with_vec(std::integral_constant<int, 16 / sizeof(T)>{});
  else
    with_vec(std::integral_constant<int, 1>{});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_normalize_cosine_cuda(const at::Tensor& x,
                                                                          const at::Tensor& bias,
                                                                          const at::Tensor& y, double eps) {
  check_bias_target_args(x, bias, y);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  auto zhat = at::empty_like(x);
  auto cos = at::empty({rows}, x.options().dtype(at::kFloat));
  auto norms = at::empty({rows, 2}, x.options().dtype(at::kFloat));
  if (rows == 0) return {zhat, cos, norms};
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_normalize_cosine_cuda", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* bp = bias.const_data_ptr<scalar_t>();
    const auto* yp = y.const_data_ptr<scalar_t>();
    auto* zp = zhat.mutable_data_ptr<scalar_t>();
    const int vec = pack_width<scalar_t>(cols, {xp, bp, yp, zp});
    dispatch_row_layout<scalar_t>(cols, vec, [&](auto vec_tag, auto ppl_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      constexpr int PPL = decltype(ppl_tag)::value;
      const int64_t blocks = std::min<int64_t>(ceil_div(rows, kWarpsPerBlock), int64_t(num_sms()) * 16);
      normalize_cosine_kernel<scalar_t, VEC, PPL>
          <<<blocks, kWarpsPerBlock * kWarp, 0, at::cuda::getCurrentCUDAStream()>>>(
              xp, bp, yp, zp, cos.mutable_data_ptr<float>(), norms.mutable_data_ptr<float>(), rows, cols,
              static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {zhat, cos, norms};
}

std::tuple<at::Tensor, at::Tensor> bias_normalize_cosine_backward_cuda(const at::Tensor& grad_zhat,
                                                                       const at::Tensor& grad_cos,
                                                                       const at::Tensor& zhat, const at::Tensor& y,
                                                                       const at::Tensor& cos, const at::Tensor& norms,
                                                                       double eps) {
  check_normalize_cosine_backward_args(grad_zhat, grad_cos, zhat, y, cos, norms);
  check_cuda_dtype(zhat, "zhat");
  const c10::cuda::CUDAGuard guard(zhat.device());
  const int64_t rows = zhat.size(0), cols = zhat.size(1);
  auto grad_x = at::empty_like(zhat);
  if (rows == 0) return {grad_x, at::zeros({cols}, zhat.options().dtype(at::kFloat))};
  at::Tensor partial;
  GFCORE_DISPATCH_CUDA_FLOATS(zhat.scalar_type(), "bias_normalize_cosine_backward_cuda", [&] {
    const auto* gp = grad_zhat.const_data_ptr<scalar_t>();
    const auto* zp = zhat.const_data_ptr<scalar_t>();
    const auto* yp = y.const_data_ptr<scalar_t>();
    auto* gxp = grad_x.mutable_data_ptr<scalar_t>();
    const int vec = pack_width<scalar_t>(cols, {gp, zp, yp, gxp});
    dispatch_row_layout<scalar_t>(cols, vec, [&](auto vec_tag, auto ppl_tag) {
      constexpr int VEC = decltype(vec_tag)::value;
      constexpr int PPL = decltype(ppl_tag)::value;
      const size_t smem = sizeof(float) * kWarpsPerBlock * cols;
      auto kernel = normalize_cosine_backward_kernel<scalar_t, VEC, PPL>;
      if (smem > 48 * 1024)
        C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
      // One wave of resident blocks, each walking many rows: every SM busy, and as few
      // partial rows to sum as that allows.
      int per_sm = 0;
      C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kWarpsPerBlock * kWarp, smem));
      const int64_t blocks =
          std::min<int64_t>(ceil_div(rows, kWarpsPerBlock), int64_t(num_sms()) * std::max(per_sm, 1));
      partial = at::empty({blocks, cols}, zhat.options().dtype(at::kFloat));
      kernel<<<blocks, kWarpsPerBlock * kWarp, smem, at::cuda::getCurrentCUDAStream()>>>(
          gp, grad_cos.const_data_ptr<float>(), zp, yp, cos.const_data_ptr<float>(), norms.const_data_ptr<float>(),
          gxp, partial.mutable_data_ptr<float>(), rows, cols, static_cast<float>(eps));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {grad_x, sum_partials(partial)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("bias_normalize_cosine", &bias_normalize_cosine_cuda);
  m.impl("bias_normalize_cosine_backward", &bias_normalize_cosine_backward_cuda);
}

}  // namespace alignment
}  // namespace gfcore
