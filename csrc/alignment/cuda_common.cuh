// Device helpers shared by the alignment-loss CUDA kernels.
//
// Data is walked in packs of 16 bytes (8 bf16/fp16 or 4 fp32 values) when the column count
// and the pointers allow it, else one value at a time; arithmetic is float32.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

namespace gfcore {
namespace alignment {

constexpr int kWarp = 32;

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

// c10::Half and c10::BFloat16 convert to and from float on the device (round to nearest even).
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

// The widest pack (16 bytes) that divides the row and the alignment of every pointer.
template <typename T>
inline int pack_width(int64_t cols, std::initializer_list<const void*> ptrs) {
  int width = 16 / static_cast<int>(sizeof(T));
  bool aligned = true;
  for (const void* p : ptrs) aligned = aligned && (reinterpret_cast<std::uintptr_t>(p) % 16 == 0);
  return (aligned && cols % width == 0) ? width : 1;
}

inline int num_sms() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Launch shape of the "thread owns a pack of columns, walks a group of rows" kernels:
// blocks of up to max_threads threads across the columns (grid.x) and enough row groups
// (grid.y) to fill the GPU with 8 blocks per SM, at least 8 rows each.
struct ColumnPackGrid {
  int threads;
  int64_t col_blocks;
  int64_t rows_per_group;
  int64_t groups;
};

inline ColumnPackGrid column_pack_grid(int64_t rows, int64_t cols, int vec, int max_threads) {
  ColumnPackGrid g;
  const int64_t packs_per_row = cols / vec;
  g.threads = static_cast<int>(std::min<int64_t>(max_threads, ceil_div(packs_per_row, kWarp) * kWarp));
  g.col_blocks = ceil_div(packs_per_row, g.threads);
  const int64_t wanted = std::max<int64_t>(
      1, std::min<int64_t>(ceil_div(rows, 8), ceil_div(int64_t(num_sms()) * 8, g.col_blocks)));
  g.rows_per_group = ceil_div(rows, wanted);
  g.groups = ceil_div(rows, g.rows_per_group);
  return g;
}

// Sums partial[groups, cols] (float32) over groups into out[cols] (float32): a block of
// 32 columns x 32 row slices, then a shared-memory reduction over the slices.
__global__ void sum_partials_kernel(const float* __restrict__ partial, float* __restrict__ out, int64_t groups,
                                    int64_t cols);

// Launches sum_partials_kernel on the current stream and returns out.
at::Tensor sum_partials(const at::Tensor& partial);

// Dispatch over the 16-bit and 32-bit float types that the CUDA kernels support.
#define GFCORE_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

inline void check_cuda_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              name, ": the CUDA kernels take float32, bfloat16 or float16, got ", t.scalar_type(),
              " (float64 runs on the CPU kernels or impl='reference')");
}

}  // namespace alignment
}  // namespace gfcore
