// Device code of the alignment-loss CUDA kernels (no ATen: the harness compiles it with g++).
//
// Data is walked in packs of 16 bytes (8 bf16/fp16 or 4 fp32 values) when the column count
// and the pointers allow it, else one value at a time; arithmetic is float32.
//   bias_silu:               silu(x + b), elementwise over packs;
//   bias_silu_backward:      grad * silu'(x + b) and its column sums;
//   bias_mse:                diff = x + b - y, its column sums and the sum of squares;
//   normalize_cosine(_bwd):  a row over one to eight warps, held in registers (at most 64
//                            bytes of an operand per thread);
// Column sums: each thread owns one pack of columns and walks a group of rows (or, for the
// row-per-warp kernels, a block's warps meet in shared memory); one partial row per group or
// block goes to sum_partials, so results repeat bit for bit (no atomics).
#pragma once

#include "common/cuda_compat.cuh"

namespace gfcore {
namespace alignment {

constexpr int kWarp = 32;
constexpr int kMseMaxThreads = 256;
constexpr int kRowBlockWarps = 8;  // normalize/cosine: warps per block (one to eight rows in flight)
constexpr int kMaxRowWarps = 8;    // warps one row may be split over
// Packs per thread of one operand of a row: 4 packs of 16 bytes (or 16 single values when
// the row cannot be walked in packs) keep every instantiation free of spills.
template <int VEC>
constexpr int max_packs_per_lane() {
  return VEC > 1 ? 4 : 16;
}

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
__global__ void __launch_bounds__(kMseMaxThreads, 1)
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

// ---- normalize_cosine: a row is split over `row_warps` warps (1, 2, 4 or 8) of a block of
// kRowBlockWarps warps; thread i of a row (i = 0 .. 32 row_warps - 1) holds packs i, i + 32
// row_warps, ... (PPL of them, at most max_packs_per_lane<VEC>()), so a lane never holds more than 64
// bytes of one operand: no instantiation spills, and every input is read from HBM once.
// A block serves kRowBlockWarps / row_warps rows at a time. Row sums: warp shuffles, then, for
// rows over several warps, the warps' partial sums meet in shared memory and are added in warp
// order (two buffers alternate between rows, so one barrier per row suffices).
//   forward:  read x, y; write zhat (and 12 bytes of per-row statistics)
//   backward: read grad_zhat, zhat, y; write grad_x; column sums per thread in registers across
//             its rows, then over the block's row slots in shared memory (one partial row).
struct RowSplit {
  int warp, lane, row_warps;
  int slot;         // the block's row slot of this thread
  int slots;        // rows in flight per block
  int thread;       // index of the thread within its row
  int row_threads;  // threads per row
  __device__ RowSplit(int row_warps_) : row_warps(row_warps_) {
    warp = threadIdx.x / kWarp;
    lane = threadIdx.x % kWarp;
    slot = warp / row_warps;
    slots = kRowBlockWarps / row_warps;
    thread = (warp % row_warps) * kWarp + lane;
    row_threads = row_warps * kWarp;
  }
};

// Sums v[0..N) over the threads of a row (all threads of the block call it, every row).
template <int N>
__device__ __forceinline__ void row_sum(float (&v)[N], const RowSplit& s, float (*red)[kRowBlockWarps][N],
                                        int parity) {
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = warp_sum(v[i]);
  if (s.row_warps == 1) return;
  if (s.lane == 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) red[parity][s.warp][i] = v[i];
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < N; ++i) v[i] = 0.f;
  for (int w = 0; w < s.row_warps; ++w) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] += red[parity][s.slot * s.row_warps + w][i];
  }
}

template <typename T, int VEC, int PPL>
__global__ void __launch_bounds__(kRowBlockWarps * kWarp, 1)
    normalize_cosine_kernel(const T* __restrict__ x, const T* __restrict__ bias, const T* __restrict__ y,
                            T* __restrict__ zhat, float* __restrict__ cos, float* __restrict__ norms, int64_t rows,
                            int64_t cols, float eps, int row_warps) {
  GFCORE_SHARED(float, red, [2][kRowBlockWarps][3]);
  const RowSplit s(row_warps);
  const int packs = static_cast<int>(cols / VEC);  // at most 8 x 32 x 16 (row_layout)
  const int64_t block_stride = static_cast<int64_t>(gridDim.x) * s.slots;
  int parity = 0;
  // Uniform trip count over the block (the row sums may meet at a barrier).
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * s.slots; base < rows; base += block_stride, parity ^= 1) {
    const int64_t r = base + s.slot;
    const bool active = r < rows;
    const T* xr = x + r * cols;
    const T* yr = y + r * cols;
    Pack<T, VEC> xv[PPL], yv[PPL];
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int p = s.thread + k * s.row_threads;
      if (active && p < packs) {
        xv[k] = load_pack<T, VEC>(xr + p * VEC);
        yv[k] = load_pack<T, VEC>(yr + p * VEC);
      }
    }
    float sums[3] = {0.f, 0.f, 0.f};  // |z|^2, |y|^2, z . y
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int p = s.thread + k * s.row_threads;
      if (active && p < packs) {
        const auto bv = load_pack<T, VEC>(bias + p * VEC);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float z = to_float(xv[k].v[j]) + to_float(bv.v[j]);
          const float v = to_float(yv[k].v[j]);
          sums[0] += z * z;
          sums[1] += v * v;
          sums[2] += z * v;
        }
      }
    }
    row_sum(sums, s, red, parity);
    const float nz = sqrtf(sums[0]), ny = sqrtf(sums[1]);
    const float rz = 1.f / fmaxf(nz, eps), ry = 1.f / fmaxf(ny, eps);
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int p = s.thread + k * s.row_threads;
      if (active && p < packs) {
        const auto bv = load_pack<T, VEC>(bias + p * VEC);
        Pack<T, VEC> ov;
#pragma unroll
        for (int j = 0; j < VEC; ++j) ov.v[j] = from_float<T>((to_float(xv[k].v[j]) + to_float(bv.v[j])) * rz);
        store_pack(zhat + r * cols + p * VEC, ov);
      }
    }
    if (active && s.thread == 0) {
      cos[r] = sums[2] * rz * ry;
      norms[2 * r] = nz;
      norms[2 * r + 1] = ny;
    }
  }
}

template <typename T, int VEC, int PPL>
__global__ void __launch_bounds__(kRowBlockWarps * kWarp, 1)
    normalize_cosine_backward_kernel(const T* __restrict__ grad_zhat, const float* __restrict__ grad_cos,
                                     const T* __restrict__ zhat, const T* __restrict__ y,
                                     const float* __restrict__ cos, const float* __restrict__ norms,
                                     T* __restrict__ grad_x, float* __restrict__ partial, int64_t rows, int64_t cols,
                                     float eps, int row_warps) {
  GFCORE_SHARED(float, red, [2][kRowBlockWarps][1]);
  GFCORE_DYNAMIC_SHARED(float, slot_colsums);  // [kRowBlockWarps / row_warps][cols]
  const RowSplit s(row_warps);
  const int packs = static_cast<int>(cols / VEC);  // at most 8 x 32 x 16 (row_layout)
  float colsum[PPL][VEC];
#pragma unroll
  for (int k = 0; k < PPL; ++k)
#pragma unroll
    for (int j = 0; j < VEC; ++j) colsum[k][j] = 0.f;

  const int64_t block_stride = static_cast<int64_t>(gridDim.x) * s.slots;
  int parity = 0;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * s.slots; base < rows; base += block_stride, parity ^= 1) {
    const int64_t r = base + s.slot;
    const bool active = r < rows;
    const T* gr = grad_zhat + r * cols;
    const T* zr = zhat + r * cols;
    const T* yr = y + r * cols;
    Pack<T, VEC> gv[PPL], zv[PPL], yv[PPL];
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int p = s.thread + k * s.row_threads;
      if (active && p < packs) {
        gv[k] = load_pack<T, VEC>(gr + p * VEC);
        zv[k] = load_pack<T, VEC>(zr + p * VEC);
        yv[k] = load_pack<T, VEC>(yr + p * VEC);
      }
    }
    float zg[1] = {0.f};
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int p = s.thread + k * s.row_threads;
      if (active && p < packs) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) zg[0] += to_float(zv[k].v[j]) * to_float(gv[k].v[j]);
      }
    }
    row_sum(zg, s, red, parity);
    if (!active) continue;  // after the row sum's barrier: the trip count stays uniform
    // Same algebra as the reference: a clamped |z| is a constant, so its terms vanish.
    const float nz = norms[2 * r];
    const float live = nz > eps ? 1.f : 0.f;
    const float rz = 1.f / fmaxf(nz, eps);
    const float ry = 1.f / fmaxf(norms[2 * r + 1], eps);
    const float gc = grad_cos[r];
    const float zcoef = live * (zg[0] + gc * cos[r]);
    const float ycoef = gc * ry;
#pragma unroll
    for (int k = 0; k < PPL; ++k) {
      const int p = s.thread + k * s.row_threads;
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
  // Column sums: each thread's registers -> its row slot's row in shared memory -> one
  // partial row per block (slots added in order).
#pragma unroll
  for (int k = 0; k < PPL; ++k) {
    const int p = s.thread + k * s.row_threads;
    if (p < packs) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) slot_colsums[s.slot * cols + p * VEC + j] = colsum[k][j];
    }
  }
  __syncthreads();
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float total = 0.f;
    for (int w = 0; w < s.slots; ++w) total += slot_colsums[w * cols + c];
    partial[blockIdx.x * cols + c] = total;
  }
}

}  // namespace alignment
}  // namespace gfcore
