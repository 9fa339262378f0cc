// Host side of the factorized attention kernels, free of ATen: layouts, the problem, grids,
// the choice of kernel per pass and device, and the launches. The torch launchers (*.cu via
// attention_host.cuh) and the harness tests (cpp_tests/kernels) call these same functions on
// raw pointers, so the harness checks the host logic along with the kernels.
//
// Each pass has its own entry points (spatial_forward, temporal_backward, ...) so that a .cu
// file instantiates only its pass's kernels and nvcc compiles the four files in parallel.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "attention/attention_kernels.cuh"
#include "attention/attention_mma.cuh"
#include "attention/attention_mma_bwd.cuh"
#include "attention/attention_temporal_mma.cuh"

namespace gfcore {
namespace attention {

// Element strides of a [B, T, P, H, D] operand (D has unit stride).
struct Strides {
  int64_t b, t, p, h;
};

inline Strides contiguous_strides(int64_t T, int64_t P, int64_t H, int64_t D) {
  return {T * P * H * D, P * H * D, H * D, D};
}

// The problem as the caller sees it: shape, pass, and options.
struct Attention {
  int64_t B, T, P, H, D;
  bool temporal;  // attend over T (else over P)
  bool causal;
  float scale;
  const float* rope_cos;  // [S, D] float32 or nullptr
  const float* rope_sin;
  int64_t seq_len() const { return temporal ? T : P; }
  int64_t rows() const { return B * T * P * H; }
};

// Strides regrouped as [B, other, seq, H] for the pass.
inline Layout layout_of(const Strides& s, bool temporal) {
  return temporal ? Layout{s.b, s.p, s.t, s.h} : Layout{s.b, s.t, s.p, s.h};
}

inline Problem make_problem(const Attention& a) {
  Problem pb;
  pb.batch = a.B;
  pb.n_other = a.temporal ? a.P : a.T;
  pb.heads = a.H;
  pb.seq_len = static_cast<int>(a.seq_len());
  pb.scale = a.scale;
  pb.causal = a.causal;
  pb.rope_cos = a.rope_cos;
  pb.rope_sin = a.rope_sin;
  return pb;
}

// Grid: x enumerates the sequences (b, other, h), y the row blocks of one sequence.
inline dim3 make_grid(const Problem& pb, int rows_per_block) {
  const int64_t sequences = pb.batch * pb.n_other * pb.heads;
  const int64_t blocks = ceil_div(pb.seq_len, rows_per_block);
  if (sequences > 0x7fffffff) throw std::invalid_argument("too many sequences (" + std::to_string(sequences) + ")");
  if (blocks > 65535) throw std::invalid_argument("sequence too long (" + std::to_string(pb.seq_len) + ")");
  return dim3(static_cast<unsigned>(sequences), static_cast<unsigned>(blocks));
}

// Rows per warp of a pass for head dim D (R32, R64, R128 are the pass's choices).
// Chosen so that no instantiation spills on sm_80 or sm_90 (4 rows at D=64 did): `make test`
// builds with ptxas -warn-spills -Werror; benchmarks/results/kernels_static.md lists registers.
template <int D, int R32, int R64, int R128>
constexpr int rows_for() {
  return D == 32 ? R32 : (D == 64 ? R64 : R128);
}

// Calls fn(std::integral_constant<int, D>) for the runtime head dim.
template <typename Fn>
cudaError_t with_head_dim(int64_t D, Fn&& fn) {
  switch (D) {
    case 32: return fn(std::integral_constant<int, 32>{});
    case 64: return fn(std::integral_constant<int, 64>{});
    case 128: return fn(std::integral_constant<int, 128>{});
    default: throw std::invalid_argument("gfcore attention: unsupported head dim " + std::to_string(D));
  }
}

// Whether the tensor-core kernels (mma.sync.m16n8k16 with bf16/fp16) run on the device.
inline bool has_mma_16816(const DeviceLimits& dev) { return dev.major >= 8; }

template <typename scalar_t>
struct ForwardArgs {
  const scalar_t *q, *k, *v;
  Strides sq, sk, sv;
  scalar_t* out;  // [B, T, P, H, D] contiguous
  float* lse;     // [B, T, P, H] contiguous
};

template <typename scalar_t>
struct BackwardArgs {
  const scalar_t *grad_out, *q, *k, *v;
  Strides sg, sq, sk, sv;
  const scalar_t* out;  // the forward's output and lse, contiguous
  const float* lse;
  scalar_t *grad_q, *grad_k, *grad_v;  // contiguous
  float* delta;                          // [B, T, P, H] workspace (the three-kernel path)
};

// ---- Forward -------------------------------------------------------------------------------
// fp32-FMA tiles: NUM_WARPS warps per block, R<D> rows per warp.
template <typename scalar_t, int NUM_WARPS, int R32, int R64, int R128>
cudaError_t launch_forward_fma(const Attention& a, const ForwardArgs<scalar_t>& f, cudaStream_t stream) {
  const Problem pb = make_problem(a);
  const Strides so = contiguous_strides(a.T, a.P, a.H, a.D), sl = contiguous_strides(a.T, a.P, a.H, 1);
  return with_head_dim(a.D, [&](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    constexpr int R = rows_for<D, R32, R64, R128>();
    const LaunchConfig cfg{make_grid(pb, NUM_WARPS * R), dim3(NUM_WARPS * kWarpSize), 0};
    return launch_kernel(attention_fwd_kernel<scalar_t, D, NUM_WARPS, R>, cfg, stream, f.q, f.k, f.v, f.out, f.lse,
                         layout_of(f.sq, a.temporal), layout_of(f.sk, a.temporal), layout_of(f.sv, a.temporal),
                         layout_of(so, a.temporal), layout_of(sl, a.temporal), pb);
  });
}

// Tensor cores (attention_mma.cuh), sm80+.
template <typename scalar_t>
cudaError_t launch_forward_mma(const Attention& a, const ForwardArgs<scalar_t>& f, cudaStream_t stream) {
  const Problem pb = make_problem(a);
  const Strides so = contiguous_strides(a.T, a.P, a.H, a.D), sl = contiguous_strides(a.T, a.P, a.H, 1);
  return with_head_dim(a.D, [&](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    const LaunchConfig cfg{make_grid(pb, kMmaBlockM), dim3(kMmaWarps * kWarpSize), 0};
    return launch_kernel(attention_fwd_mma_kernel<scalar_t, D>, cfg, stream, f.q, f.k, f.v, f.out, f.lse,
                         layout_of(f.sq, a.temporal), layout_of(f.sk, a.temporal), layout_of(f.sv, a.temporal),
                         layout_of(so, a.temporal), layout_of(sl, a.temporal), pb);
  });
}

// ---- Backward --------------------------------------------------------------------------------
// delta = rowsum(dO * O) over the [B, T, P, H] rows (out and delta contiguous).
template <typename scalar_t, int D>
cudaError_t launch_delta(const Attention& a, const BackwardArgs<scalar_t>& b, cudaStream_t stream) {
  constexpr int kDeltaWarps = 8;
  const int64_t rows = a.rows();
  const LaunchConfig cfg{dim3(static_cast<unsigned>(ceil_div(rows, kDeltaWarps))), dim3(kDeltaWarps * kWarpSize), 0};
  return launch_kernel(attention_bwd_delta_kernel<scalar_t, D>, cfg, stream, b.grad_out, b.out, b.delta, rows, a.T,
                       a.P, a.H, b.sg.b, b.sg.t, b.sg.p, b.sg.h);
}

struct BackwardLayouts {
  Layout lq, lk, lv, lg, ll, lo, l_out;
};

template <typename scalar_t>
BackwardLayouts backward_layouts(const Attention& a, const BackwardArgs<scalar_t>& b) {
  const Strides so = contiguous_strides(a.T, a.P, a.H, a.D), sl = contiguous_strides(a.T, a.P, a.H, 1);
  return {layout_of(b.sq, a.temporal), layout_of(b.sk, a.temporal), layout_of(b.sv, a.temporal),
          layout_of(b.sg, a.temporal), layout_of(sl, a.temporal),   layout_of(so, a.temporal),
          layout_of(so, a.temporal)};
}

// Three kernels with fp32-FMA tiles: delta, dQ, dK/dV.
template <typename scalar_t, int NUM_WARPS, int R32, int R64, int R128>
cudaError_t launch_backward_fma(const Attention& a, const BackwardArgs<scalar_t>& b, cudaStream_t stream) {
  const Problem pb = make_problem(a);
  const BackwardLayouts l = backward_layouts(a, b);
  return with_head_dim(a.D, [&](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    constexpr int R = rows_for<D, R32, R64, R128>();
    cudaError_t err = launch_delta<scalar_t, D>(a, b, stream);
    if (err != cudaSuccess) return err;
    const LaunchConfig cfg{make_grid(pb, NUM_WARPS * R), dim3(NUM_WARPS * kWarpSize), 0};
    err = launch_kernel(attention_bwd_dq_kernel<scalar_t, D, NUM_WARPS, R>, cfg, stream, b.q, b.k, b.v, b.grad_out,
                        b.lse, b.delta, b.grad_q, l.lq, l.lk, l.lv, l.lg, l.ll, l.lo, pb);
    if (err != cudaSuccess) return err;
    return launch_kernel(attention_bwd_dkdv_kernel<scalar_t, D, NUM_WARPS, R>, cfg, stream, b.q, b.k, b.v,
                         b.grad_out, b.lse, b.delta, b.grad_k, b.grad_v, l.lq, l.lk, l.lv, l.lg, l.ll, l.lo, pb);
  });
}

// Tensor cores (attention_mma_bwd.cuh), sm80+: delta, then the dQ and dK/dV kernels.
template <typename scalar_t>
cudaError_t launch_backward_mma(const Attention& a, const BackwardArgs<scalar_t>& b, cudaStream_t stream) {
  const Problem pb = make_problem(a);
  const BackwardLayouts l = backward_layouts(a, b);
  return with_head_dim(a.D, [&](auto head_dim) {
    constexpr int D = decltype(head_dim)::value;
    using Tiles = MmaBwdTiles<D>;
    cudaError_t err = launch_delta<scalar_t, D>(a, b, stream);
    if (err != cudaSuccess) return err;
    const dim3 grid = make_grid(pb, kMmaBlockM), block(kMmaWarps * kWarpSize);
    // Above 48 KiB a kernel must opt in to its dynamic shared memory.
    const auto dq_kernel = attention_bwd_dq_mma_kernel<scalar_t, D>;
    if ((err = allow_dynamic_smem(dq_kernel, Tiles::kDqBytes)) != cudaSuccess) return err;
    err = launch_kernel(dq_kernel, {grid, block, Tiles::kDqBytes}, stream, b.q, b.k, b.v, b.grad_out, b.lse, b.delta,
                        b.grad_q, l.lq, l.lk, l.lv, l.lg, l.ll, l.lo, pb);
    if (err != cudaSuccess) return err;
    const auto dkdv_kernel = attention_bwd_dkdv_mma_kernel<scalar_t, D>;
    if ((err = allow_dynamic_smem(dkdv_kernel, Tiles::kDkdvBytes)) != cudaSuccess) return err;
    return launch_kernel(dkdv_kernel, {grid, block, Tiles::kDkdvBytes}, stream, b.q, b.k, b.v, b.grad_out, b.lse,
                         b.delta, b.grad_k, b.grad_v, l.lq, l.lk, l.lv, l.lg, l.ll, l.lo, pb);
  });
}

// ---- Temporal tensor-core kernels (attention_temporal_mma.cuh), T <= 64 on sm80+ ------------
// The sequence length padded to the kernels' tile: 16, 32 or 64 rows.
inline int temporal_tc_pad(int64_t T) { return T <= 16 ? 16 : (T <= 32 ? 32 : 64); }

// Calls fn(std::integral_constant<int, T_PAD>) for the padded sequence length.
template <typename Fn>
cudaError_t with_seq_pad(int64_t T, Fn&& fn) {
  switch (temporal_tc_pad(T)) {
    case 16: return fn(std::integral_constant<int, 16>{});
    case 32: return fn(std::integral_constant<int, 32>{});
    default: return fn(std::integral_constant<int, 64>{});
  }
}

inline size_t temporal_tc_smem(int64_t T, int64_t D, bool backward) {
  size_t bytes = 0;
  with_head_dim(D, [&](auto head_dim) {
    with_seq_pad(T, [&](auto seq_pad) {
      using Tiles = TemporalTiles<decltype(head_dim)::value, decltype(seq_pad)::value>;
      bytes = backward ? Tiles::kBwdBytes : Tiles::kFwdBytes;
      return cudaSuccess;
    });
    return cudaSuccess;
  });
  return bytes;
}

// Whether the temporal tensor-core kernels serve the problem: T <= 64, sm80+, and (always true on
// sm80/sm90: at most 105 KiB) the backward's shared memory within the device's opt-in limit.
inline bool temporal_tc_serves(const Attention& a, const DeviceLimits& dev) {
  return a.temporal && a.T <= kTcMaxSeq && has_mma_16816(dev) &&
         temporal_tc_smem(a.T, a.D, /*backward=*/true) <= dev.smem_per_block_optin;
}

// 16-byte loads need every row start 16-byte aligned: the pointer, and each stride a multiple
// of 8 elements (D is 32, 64 or 128, so D itself always is).
template <typename scalar_t>
bool rows_16b_aligned(const scalar_t* p, const Strides& s) {
  constexpr int64_t kPer16 = 16 / sizeof(scalar_t);
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && s.b % kPer16 == 0 && s.t % kPer16 == 0 &&
         s.p % kPer16 == 0 && s.h % kPer16 == 0;
}

inline dim3 temporal_tc_grid(const Problem& pb, int seqs_per_cta) {
  const int64_t sequences = pb.batch * pb.n_other * pb.heads;
  const int64_t blocks = ceil_div(sequences, seqs_per_cta);
  if (blocks > 0x7fffffff) throw std::invalid_argument("too many sequences (" + std::to_string(sequences) + ")");
  return dim3(static_cast<unsigned>(blocks));
}

template <typename scalar_t>
cudaError_t launch_forward_temporal_tc(const Attention& a, const ForwardArgs<scalar_t>& f, cudaStream_t stream) {
  const Problem pb = make_problem(a);
  const Strides so = contiguous_strides(a.T, a.P, a.H, a.D), sl = contiguous_strides(a.T, a.P, a.H, 1);
  const bool vec16 = rows_16b_aligned(f.q, f.sq) && rows_16b_aligned(f.k, f.sk) && rows_16b_aligned(f.v, f.sv);
  const int64_t sequences = pb.batch * pb.n_other * pb.heads;
  return with_head_dim(a.D, [&](auto head_dim) {
    return with_seq_pad(a.T, [&](auto seq_pad) {
      constexpr int D = decltype(head_dim)::value, T_PAD = decltype(seq_pad)::value;
      using Tiles = TemporalTiles<D, T_PAD>;
      const auto kernel = temporal_fwd_tc_kernel<scalar_t, D, T_PAD>;
      const cudaError_t err = allow_dynamic_smem(kernel, Tiles::kFwdBytes);
      if (err != cudaSuccess) return err;
      const LaunchConfig cfg{temporal_tc_grid(pb, Tiles::kSeqs), dim3(kTcThreads), Tiles::kFwdBytes};
      return launch_kernel(kernel, cfg, stream, f.q, f.k, f.v, f.out, f.lse, layout_of(f.sq, true),
                           layout_of(f.sk, true), layout_of(f.sv, true), layout_of(so, true), layout_of(sl, true), pb,
                           sequences, vec16);
    });
  });
}

template <typename scalar_t>
cudaError_t launch_backward_temporal_tc(const Attention& a, const BackwardArgs<scalar_t>& b, cudaStream_t stream) {
  const Problem pb = make_problem(a);
  const BackwardLayouts l = backward_layouts(a, b);
  const Strides so = contiguous_strides(a.T, a.P, a.H, a.D);
  const bool vec16 = rows_16b_aligned(b.q, b.sq) && rows_16b_aligned(b.k, b.sk) && rows_16b_aligned(b.v, b.sv) &&
                     rows_16b_aligned(b.grad_out, b.sg) && rows_16b_aligned(b.out, so);
  const int64_t sequences = pb.batch * pb.n_other * pb.heads;
  return with_head_dim(a.D, [&](auto head_dim) {
    return with_seq_pad(a.T, [&](auto seq_pad) {
      constexpr int D = decltype(head_dim)::value, T_PAD = decltype(seq_pad)::value;
      using Tiles = TemporalTiles<D, T_PAD>;
      const auto kernel = temporal_bwd_tc_kernel<scalar_t, D, T_PAD>;
      const cudaError_t err = allow_dynamic_smem(kernel, Tiles::kBwdBytes);
      if (err != cudaSuccess) return err;
      const LaunchConfig cfg{temporal_tc_grid(pb, Tiles::kSeqs), dim3(kTcThreads), Tiles::kBwdBytes};
      return launch_kernel(kernel, cfg, stream, b.q, b.k, b.v, b.grad_out, b.out, b.lse, b.grad_q, b.grad_k,
                           b.grad_v, l.lq, l.lk, l.lv, l.lg, l.l_out, l.ll, l.lo, pb, sequences, vec16);
    });
  });
}

// ---- The passes: which kernels serve which device --------------------------------------------
// Spatial (P up to 4096): tensor cores on sm80+, else 8 warps of fp32 FMAs per key/value tile.
template <typename scalar_t>
cudaError_t spatial_forward(const Attention& a, const ForwardArgs<scalar_t>& f, const DeviceLimits& dev,
                            cudaStream_t stream) {
  if (has_mma_16816(dev)) return launch_forward_mma(a, f, stream);
  return launch_forward_fma<scalar_t, 8, 4, 2, 2>(a, f, stream);
}

template <typename scalar_t>
cudaError_t spatial_backward(const Attention& a, const BackwardArgs<scalar_t>& b, const DeviceLimits& dev,
                             cudaStream_t stream) {
  if (has_mma_16816(dev)) return launch_backward_mma(a, b, stream);
  return launch_backward_fma<scalar_t, 4, 4, 2, 2>(a, b, stream);
}

// Temporal (T is 8 to 64 in practice): the tensor-core kernels that hold whole sequences; longer
// sequences take the spatial pass's streaming tensor-core kernels (the same strided layouts),
// GPUs before sm80 the fp32-FMA kernels.
template <typename scalar_t>
cudaError_t temporal_forward(const Attention& a, const ForwardArgs<scalar_t>& f, const DeviceLimits& dev,
                             cudaStream_t stream) {
  if (temporal_tc_serves(a, dev)) return launch_forward_temporal_tc(a, f, stream);
  if (has_mma_16816(dev)) return launch_forward_mma(a, f, stream);
  return launch_forward_fma<scalar_t, 4, 4, 4, 4>(a, f, stream);
}

template <typename scalar_t>
cudaError_t temporal_backward(const Attention& a, const BackwardArgs<scalar_t>& b, const DeviceLimits& dev,
                              cudaStream_t stream) {
  if (temporal_tc_serves(a, dev)) return launch_backward_temporal_tc(a, b, stream);
  if (has_mma_16816(dev)) return launch_backward_mma(a, b, stream);
  return launch_backward_fma<scalar_t, 4, 4, 2, 2>(a, b, stream);
}

}  // namespace attention
}  // namespace gfcore
