// Device code of the alignment-loss CUDA kernels (no ATen: the harness compiles it with g++).
//
// Data is walked in packs of 16 bytes (8 bf16/fp16 or 4 fp32 values) when the column count
// and the pointers allow it, else one value at a time; arithmetic is float32.
//   bias_silu:               silu(x + b), elementwise over packs;
//   bias_silu_backward:      grad * silu'(x + b) and its column sums;
//   bias_mse:                diff = x + b - y, its column sums and the sum of squares;
//   normalize_cosine(_bwd):  one warp per row, the row held in registers;
// Column sums: each thread owns one pack of columns and walks a group of rows (or, for the
// row-per-warp kernels, a block's warps meet in shared memory); one partial row per group or
// block goes to sum_partials, so results repeat bit for bit (no atomics).
#pragma once

#include "common/cuda_compat.cuh"

namespace gfcore {
namespace alignment {

constexpr int kWarp = 32;
constexpr int kMseMaxThreads = 256;
constexpr int kRowWarpsPerBlock = 4;  // normalize/cosine: warps (rows in flight) per block
constexpr int kMaxPacksPerLane = 16;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Pack<T, N> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, N>& v) {
  *reinterpret_cast<Pack<T, N>*>(p) = v;
}

// c10::Half and c10::BFloat16 (and the harness's twins) convert to and from float with round
// to nearest even.
template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}

__device__ __forceinline__ float sigmoidf(float a) { return 1.f / (1.f + __expf(-a)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// ---- bias_silu: grid-stride over packs -------------------------------------------------------
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

// ---- bias_silu_backward: grid (column blocks, row groups) ------------------------------------
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

// ---- bias_mse: grid (column blocks, row groups); block sums of squares via shared memory ----
template <typename T, int VEC>
__global__ void __launch_bounds__(kMseMaxThreads)
    bias_mse_kernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ y,
                    T* __restrict__ diff, float* __restrict__ partial_colsum, float* __restrict__ partial_squares,
                    int64_t rows, int64_t cols, int64_t rows_per_group) {
  GFCORE_SHARED(float, warp_squares, [kMseMaxThreads / kWarp]);
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

// ---- normalize_cosine: one warp per row; lane l holds packs l, l + 32, ... (PPL of them) -----
//   forward:  read x, y; write zhat (and 12 bytes of per-row statistics)
//   backward: read grad_zhat, zhat, y; write grad_x; column sums per lane in registers across
//             the warp's rows, then over the block's warps in shared memory (one partial row).
template <typename T, int VEC, int PPL>
__global__ void __launch_bounds__(kRowWarpsPerBlock * kWarp)
    normalize_cosine_kernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ y,
                            T* __restrict__ zhat, float* __restrict__ cos, float* __restrict__ norms, int64_t rows,
                            int64_t cols, float eps) {
  const int lane = threadIdx.x % kWarp;
  const int64_t packs = cols / VEC;
  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kRowWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarpsPerBlock + threadIdx.x / kWarp; r < rows;
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
__global__ void __launch_bounds__(kRowWarpsPerBlock * kWarp)
    normalize_cosine_backward_kernel(const T* __restrict__ grad_zhat, const float* __restrict__ grad_cos,
                                     const T* __restrict__ zhat, const T* __restrict__ y,
                                     const float* __restrict__ cos, const float* __restrict__ norms,
                                     T* __restrict__ grad_x, float* __restrict__ partial, int64_t rows, int64_t cols,
                                     float eps) {
  GFCORE_DYNAMIC_SHARED(float, warp_colsums);  // [kRowWarpsPerBlock][cols]
  const int lane = threadIdx.x % kWarp;
  const int warp = threadIdx.x / kWarp;
  const int64_t packs = cols / VEC;
  float colsum[PPL][VEC];
#pragma unroll
  for (int k = 0; k < PPL; ++k)
#pragma unroll
    for (int j = 0; j < VEC; ++j) colsum[k][j] = 0.f;

  const int64_t warp_stride = static_cast<int64_t>(gridDim.x) * kRowWarpsPerBlock;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kRowWarpsPerBlock + warp; r < rows; r += warp_stride) {
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
    for (int w = 0; w < kRowWarpsPerBlock; ++w) total += warp_colsums[w * cols + c];
    partial[blockIdx.x * cols + c] = total;
  }
}

}  // namespace alignment
}  // namespace gfcore
