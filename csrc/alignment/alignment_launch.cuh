// Host side of the alignment-loss kernels, free of ATen: launch shapes, the pack-width and
// row-layout choices, and the launches themselves. The torch launchers (*.cu) and the harness
// tests (cpp_tests/kernels) call these same functions on raw pointers, so the harness checks
// the host logic (pack fallback, grid sizes, shared memory, opt-in) as well as the kernels.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "alignment/alignment_kernels.cuh"

namespace gfcore {
namespace alignment {

// The widest pack (16 bytes) that divides the row and the alignment of every pointer.
template <typename T>
inline int pack_width(int64_t cols, std::initializer_list<const void*> ptrs) {
  int width = 16 / static_cast<int>(sizeof(T));
  bool aligned = true;
  for (const void* p : ptrs) aligned = aligned && (reinterpret_cast<std::uintptr_t>(p) % 16 == 0);
  return (aligned && cols % width == 0) ? width : 1;
}

// Calls fn(std::integral_constant<int, VEC>) for the chosen pack width (16 bytes or 1 value).
template <typename T, typename Fn>
inline cudaError_t with_pack(int vec, Fn&& fn) {
  if (vec > 1) return fn(std::integral_constant<int, 16 / sizeof(T)>{});
  return fn(std::integral_constant<int, 1>{});
}

// Launch shape of the "thread owns a pack of columns, walks a group of rows" kernels
// (bias_silu_backward, bias_mse): blocks of up to max_threads threads across the columns
// (grid.x) and enough row groups (grid.y) to fill the GPU with 8 blocks per SM, at least 8
// rows each. One partial row of column sums per group.
struct ColumnPackPlan {
  int vec;
  int threads;
  int64_t col_blocks;
  int64_t rows_per_group;
  int64_t groups;
  LaunchConfig config() const {
    return {dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(groups)), dim3(threads), 0};
  }
};

inline ColumnPackPlan column_pack_plan(int64_t rows, int64_t cols, int vec, int max_threads,
                                       const DeviceLimits& dev) {
  ColumnPackPlan p;
  p.vec = vec;
  const int64_t packs_per_row = cols / vec;
  p.threads = static_cast<int>(std::min<int64_t>(max_threads, ceil_div(packs_per_row, kWarp) * kWarp));
  p.col_blocks = ceil_div(packs_per_row, p.threads);
  const int64_t wanted = std::max<int64_t>(
      1, std::min<int64_t>(ceil_div(rows, 8), ceil_div(int64_t(dev.sm_count) * 8, p.col_blocks)));
  p.rows_per_group = ceil_div(rows, wanted);
  p.groups = ceil_div(rows, p.rows_per_group);
  return p;
}

// ---- bias_silu ----------------------------------------------------------------------------
template <typename T>
cudaError_t launch_bias_silu(const T* x, const T* bias, T* out, int64_t rows, int64_t cols, const DeviceLimits& dev,
                             cudaStream_t stream) {
  if (rows * cols == 0) return cudaSuccess;
  return with_pack<T>(pack_width<T>(cols, {x, bias, out}), [&](auto vec_tag) {
    constexpr int VEC = decltype(vec_tag)::value;
    const int64_t packs = rows * cols / VEC;
    const int threads = 256;
    const int64_t blocks = std::min<int64_t>(ceil_div(packs, threads), int64_t(dev.sm_count) * 16);
    return launch_kernel(bias_silu_kernel<T, VEC>, {dim3(static_cast<unsigned>(blocks)), dim3(threads), 0}, stream,
                         x, bias, out, packs, cols / VEC);
  });
}

// ---- bias_silu_backward: plan (for the size of `partial`: plan.groups x cols), then launch ----
template <typename T>
ColumnPackPlan plan_bias_silu_backward(const T* grad, const T* x, const T* bias, T* grad_x, int64_t rows,
                                       int64_t cols, const DeviceLimits& dev) {
  return column_pack_plan(rows, cols, pack_width<T>(cols, {grad, x, bias, grad_x}), 256, dev);
}

template <typename T>
cudaError_t launch_bias_silu_backward(const ColumnPackPlan& plan, const T* grad, const T* x, const T* bias,
                                      T* grad_x, float* partial, int64_t rows, int64_t cols, cudaStream_t stream) {
  return with_pack<T>(plan.vec, [&](auto vec_tag) {
    constexpr int VEC = decltype(vec_tag)::value;
    return launch_kernel(bias_silu_backward_kernel<T, VEC>, plan.config(), stream, grad, x, bias, grad_x, partial,
                         rows, cols, plan.rows_per_group);
  });
}

// ---- bias_mse: partial_colsum is plan.groups x cols, partial_squares plan.groups x col_blocks ---
template <typename T>
ColumnPackPlan plan_bias_mse(const T* x, const T* bias, const T* y, T* diff, int64_t rows, int64_t cols,
                             const DeviceLimits& dev) {
  return column_pack_plan(rows, cols, pack_width<T>(cols, {x, bias, y, diff}), kMseMaxThreads, dev);
}

template <typename T>
cudaError_t launch_bias_mse(const ColumnPackPlan& plan, const T* x, const T* bias, const T* y, T* diff,
                            float* partial_colsum, float* partial_squares, int64_t rows, int64_t cols,
                            cudaStream_t stream) {
  return with_pack<T>(plan.vec, [&](auto vec_tag) {
    constexpr int VEC = decltype(vec_tag)::value;
    return launch_kernel(bias_mse_kernel<T, VEC>, plan.config(), stream, x, bias, y, diff, partial_colsum,
                         partial_squares, rows, cols, plan.rows_per_group);
  });
}

// ---- normalize_cosine: a row over one to eight warps, in registers ---------------------------
// How a row of `cols` values is laid out over the threads: VEC values per pack, PPL packs per
// thread, row_warps warps per row (alignment_kernels.cuh).
struct RowLayout {
  int vec, ppl, row_warps;
  int slots() const { return kRowBlockWarps / row_warps; }  // rows in flight per block
};

inline int max_packs_per_lane(int vec) { return vec > 1 ? max_packs_per_lane<2>() : max_packs_per_lane<1>(); }

// The widest row the kernels take for a pack width: 8 warps x 32 threads x PPL packs.
inline int64_t normalize_cosine_max_cols(int vec) {
  return int64_t(kMaxRowWarps) * kWarp * max_packs_per_lane(vec) * vec;
}

// Up to 8 warps per row, as few as hold the row with at most 2 packs of 16 bytes (4 single
// values) per thread, then the smallest power-of-two packs per thread (4 packs, 16 values at
// most, for rows wider than 8 warps of that); throws for wider rows. Fewer packs per thread
// keep fewer registers live (more blocks per SM) at the cost of one barrier per row.
inline RowLayout row_layout(int64_t cols, int vec) {
  const int64_t packs = cols / vec;
  if (cols > normalize_cosine_max_cols(vec))
    throw std::invalid_argument(
        "the CUDA normalize/cosine kernels hold a row in the registers of at most " + std::to_string(kMaxRowWarps) +
        " warps: rows of at most " + std::to_string(normalize_cosine_max_cols(vec)) +
        " values are supported for this dtype and alignment, got " + std::to_string(cols) +
        " (use impl='reference' for wider targets)");
  const int preferred_ppl = vec > 1 ? 2 : 4;
  RowLayout l{vec, 1, 1};
  while (l.row_warps < kMaxRowWarps && int64_t(l.row_warps) * kWarp * preferred_ppl < packs) l.row_warps *= 2;
  const int64_t needed = ceil_div(packs, int64_t(l.row_warps) * kWarp);
  while (l.ppl < needed) l.ppl *= 2;
  return l;
}

// Calls fn(vec_tag, ppl_tag) with compile-time pack width and packs per thread (packs of 16
// bytes: 1, 2 or 4 per thread; single values: 1 to 16).
template <typename T, typename Fn>
cudaError_t with_row_layout(const RowLayout& l, Fn&& fn) {
  return with_pack<T>(l.vec, [&](auto vec_tag) {
    constexpr int VEC = decltype(vec_tag)::value;
    if constexpr (VEC > 1) {
      switch (l.ppl) {
        case 1: return fn(vec_tag, std::integral_constant<int, 1>{});
        case 2: return fn(vec_tag, std::integral_constant<int, 2>{});
        default: return fn(vec_tag, std::integral_constant<int, 4>{});
      }
    } else {
      switch (l.ppl) {
        case 1: return fn(vec_tag, std::integral_constant<int, 1>{});
        case 2: return fn(vec_tag, std::integral_constant<int, 2>{});
        case 4: return fn(vec_tag, std::integral_constant<int, 4>{});
        case 8: return fn(vec_tag, std::integral_constant<int, 8>{});
        default: return fn(vec_tag, std::integral_constant<int, 16>{});
      }
    }
  });
}

// Forward: blocks of kRowBlockWarps warps walk the rows (grid capped at 8 blocks per SM, the
// most that fit by threads; max_blocks > 0 caps it further, for tests of the row loop).
template <typename T>
cudaError_t launch_bias_normalize_cosine(const T* x, const T* bias, const T* y, T* zhat, float* cos, float* norms,
                                         int64_t rows, int64_t cols, float eps, const DeviceLimits& dev,
                                         cudaStream_t stream, int64_t max_blocks = 0) {
  if (rows == 0) return cudaSuccess;
  const RowLayout l = row_layout(cols, pack_width<T>(cols, {x, bias, y, zhat}));
  return with_row_layout<T>(l, [&](auto vec_tag, auto ppl_tag) {
    constexpr int VEC = decltype(vec_tag)::value, PPL = decltype(ppl_tag)::value;
    int64_t blocks = std::min<int64_t>(ceil_div(rows, l.slots()), int64_t(dev.sm_count) * 8);
    if (max_blocks > 0) blocks = std::min(blocks, max_blocks);
    return launch_kernel(normalize_cosine_kernel<T, VEC, PPL>,
                         {dim3(static_cast<unsigned>(blocks)), dim3(kRowBlockWarps * kWarp), 0}, stream, x, bias, y,
                         zhat, cos, norms, rows, cols, eps, l.row_warps);
  });
}

// Backward: one wave of resident blocks, each walking many rows (every SM busy, and as few
// partial rows to sum as that allows). `partial` is plan.blocks x cols; a test may lower
// plan.blocks (more rows per block) before allocating `partial`.
struct NormalizeCosineBackwardPlan {
  RowLayout layout;
  int64_t blocks;
  size_t smem;  // the block's row slots meet in [slots][cols] floats (at most 32 KiB)
};

template <typename T>
NormalizeCosineBackwardPlan plan_bias_normalize_cosine_backward(const T* grad_zhat, const T* zhat, const T* y,
                                                                T* grad_x, int64_t rows, int64_t cols,
                                                                const DeviceLimits& dev) {
  NormalizeCosineBackwardPlan p;
  p.layout = row_layout(cols, pack_width<T>(cols, {grad_zhat, zhat, y, grad_x}));
  p.smem = sizeof(float) * p.layout.slots() * cols;
  int per_sm = 1;
  with_row_layout<T>(p.layout, [&](auto vec_tag, auto ppl_tag) {
    constexpr int VEC = decltype(vec_tag)::value, PPL = decltype(ppl_tag)::value;
    const auto kernel = normalize_cosine_backward_kernel<T, VEC, PPL>;
    if (p.smem > 48 * 1024) allow_dynamic_smem(kernel, p.smem);
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kRowBlockWarps * kWarp, p.smem);
  });
  p.blocks = std::max<int64_t>(1, std::min<int64_t>(ceil_div(rows, p.layout.slots()),
                                                    int64_t(dev.sm_count) * std::max(per_sm, 1)));
  return p;
}

template <typename T>
cudaError_t launch_bias_normalize_cosine_backward(const NormalizeCosineBackwardPlan& plan, const T* grad_zhat,
                                                  const float* grad_cos, const T* zhat, const T* y, const float* cos,
                                                  const float* norms, T* grad_x, float* partial, int64_t rows,
                                                  int64_t cols, float eps, cudaStream_t stream) {
  return with_row_layout<T>(plan.layout, [&](auto vec_tag, auto ppl_tag) {
    constexpr int VEC = decltype(vec_tag)::value, PPL = decltype(ppl_tag)::value;
    const auto kernel = normalize_cosine_backward_kernel<T, VEC, PPL>;
    if (plan.smem > 48 * 1024) {  // above 48 KiB a kernel must opt in to its dynamic shared memory
      const cudaError_t err = allow_dynamic_smem(kernel, plan.smem);
      if (err != cudaSuccess) return err;
    }
    return launch_kernel(kernel, {dim3(static_cast<unsigned>(plan.blocks)), dim3(kRowBlockWarps * kWarp), plan.smem},
                         stream, grad_zhat, grad_cos, zhat, y, cos, norms, grad_x, partial, rows, cols, eps,
                         plan.layout.row_warps);
  });
}

}  // namespace alignment
}  // namespace gfcore
