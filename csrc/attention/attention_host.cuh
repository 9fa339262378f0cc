// Host side of the factorized attention kernels: argument checks, layouts, launches.
//
// The .cu files of this folder instantiate run_forward / run_backward for one pass each
// (spatial or temporal) with that pass's tile sizes, so nvcc compiles them in parallel; the
// spatial ones also hold the tensor-core launches (run_forward_mma, run_backward_mma).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <string>
#include <tuple>

#include "attention/attention_kernels.cuh"

namespace gfcore {
namespace attention {

inline void check_operand(const char* op, const char* name, const at::Tensor& x,
                          const at::Tensor& q) {
  TORCH_CHECK(x.dim() == 5, op, ": ", name, " must be [B, T, P, H, D], got ", x.sizes());
  TORCH_CHECK(x.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.sizes() == q.sizes(), op, ": ", name, " has shape ", x.sizes(),
              " but q has ", q.sizes());
  TORCH_CHECK(x.scalar_type() == q.scalar_type(), op, ": ", name, " is ", x.scalar_type(),
              " but q is ", q.scalar_type());
  TORCH_CHECK(x.device() == q.device(), op, ": ", name, " is on ", x.device(), " but q on ",
              q.device());
  TORCH_CHECK(x.size(4) <= 1 || x.stride(4) == 1, op, ": ", name,
              " must have unit stride on D (the last dim), got strides ", x.strides());
}

inline void check_inputs(const char* op, const at::Tensor& q, const at::Tensor& k,
                         const at::Tensor& v, const std::optional<at::Tensor>& rope_cos,
                         const std::optional<at::Tensor>& rope_sin, int64_t seq_len) {
  check_operand(op, "q", q, q);
  check_operand(op, "k", k, q);
  check_operand(op, "v", v, q);
  TORCH_CHECK(q.scalar_type() == at::kHalf || q.scalar_type() == at::kBFloat16, op,
              ": the CUDA kernels take float16 or bfloat16, got ", q.scalar_type(),
              " (float32 goes through the PyTorch reference)");
  const int64_t D = q.size(4);
  TORCH_CHECK(D == 32 || D == 64 || D == 128, op,
              ": the CUDA kernels take head dims 32, 64 and 128, got D=", D);
  TORCH_CHECK(rope_cos.has_value() == rope_sin.has_value(), op,
              ": rope_cos and rope_sin must be given together");
  if (!rope_cos.has_value()) return;
  for (const auto& [name, t] : {std::pair<const char*, const at::Tensor&>{"rope_cos", *rope_cos},
                                std::pair<const char*, const at::Tensor&>{"rope_sin", *rope_sin}}) {
    TORCH_CHECK(t.scalar_type() == at::kFloat, op, ": ", name, " must be float32, got ",
                t.scalar_type());
    TORCH_CHECK(t.device() == q.device(), op, ": ", name, " is on ", t.device(), " but q on ",
                q.device());
    TORCH_CHECK(t.dim() == 2 && t.size(0) == seq_len && t.size(1) == D, op, ": ", name,
                " must be [", seq_len, ", ", D, "] (attended-axis positions, head dim), got ",
                t.sizes());
    TORCH_CHECK(t.is_contiguous(), op, ": ", name, " must be contiguous");
  }
}

// [B, T, P, H, ...] strides regrouped as [B, other, seq, H].
inline Layout layout_of(const at::Tensor& x, bool temporal) {
  return temporal ? Layout{x.stride(0), x.stride(2), x.stride(1), x.stride(3)}
                  : Layout{x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
}

inline Problem make_problem(const at::Tensor& q, const std::optional<at::Tensor>& rope_cos,
                            const std::optional<at::Tensor>& rope_sin, double scale, bool causal,
                            bool temporal) {
  Problem pb;
  pb.batch = q.size(0);
  pb.n_other = temporal ? q.size(2) : q.size(1);
  pb.heads = q.size(3);
  pb.seq_len = static_cast<int>(temporal ? q.size(1) : q.size(2));
  pb.scale = static_cast<float>(scale);
  pb.causal = causal;
  pb.rope_cos = rope_cos.has_value() ? rope_cos->data_ptr<float>() : nullptr;
  pb.rope_sin = rope_sin.has_value() ? rope_sin->data_ptr<float>() : nullptr;
  return pb;
}

inline dim3 make_grid(const Problem& pb, int rows_per_block, const char* op) {
  const int64_t sequences = pb.batch * pb.n_other * pb.heads;
  const int64_t blocks = (pb.seq_len + rows_per_block - 1) / rows_per_block;
  TORCH_CHECK(sequences <= 0x7fffffff, op, ": too many sequences (", sequences, ")");
  TORCH_CHECK(blocks <= 65535, op, ": sequence too long (", pb.seq_len, ")");
  return dim3(static_cast<unsigned>(sequences), static_cast<unsigned>(blocks));
}

// Rows per warp of a pass for head dim D (R32, R64, R128 are the pass's choices).
template <int D, int R32, int R64, int R128>
constexpr int rows_for() {
  return D == 32 ? R32 : (D == 64 ? R64 : R128);
}

// Calls fn(std::integral_constant<int, D>) for the runtime head dim.
template <typename Fn>
void dispatch_head_dim(int64_t D, Fn&& fn) {
  switch (D) {
    case 32: fn(std::integral_constant<int, 32>{}); break;
    case 64: fn(std::integral_constant<int, 64>{}); break;
    case 128: fn(std::integral_constant<int, 128>{}); break;
    default: TORCH_CHECK(false, "gfcore attention: unsupported head dim ", D);
  }
}

// What every forward launcher needs: checked inputs, the outputs, the problem.
struct ForwardLaunch {
  at::Tensor out, lse;
  Problem pb;
  bool empty;  // nothing to compute
};

inline ForwardLaunch prepare_forward(const char* op, const at::Tensor& q, const at::Tensor& k,
                                     const at::Tensor& v, const std::optional<at::Tensor>& rope_cos,
                                     const std::optional<at::Tensor>& rope_sin, double scale,
                                     bool causal, bool temporal) {
  check_inputs(op, q, k, v, rope_cos, rope_sin, temporal ? q.size(1) : q.size(2));
  ForwardLaunch f;
  f.out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  f.lse = at::empty(q.sizes().slice(0, 4), q.options().dtype(at::kFloat));
  f.empty = q.numel() == 0;
  if (!f.empty) f.pb = make_problem(q, rope_cos, rope_sin, scale, causal, temporal);
  return f;
}

// Tile sizes: NUM_WARPS warps per block, R<D> rows per warp for head dim D.
template <int NUM_WARPS, int R32, int R64, int R128>
std::tuple<at::Tensor, at::Tensor> run_forward(const char* op, const at::Tensor& q,
                                               const at::Tensor& k, const at::Tensor& v,
                                               const std::optional<at::Tensor>& rope_cos,
                                               const std::optional<at::Tensor>& rope_sin,
                                               double scale, bool causal, bool temporal) {
  const c10::cuda::CUDAGuard guard(q.device());
  const ForwardLaunch f = prepare_forward(op, q, k, v, rope_cos, rope_sin, scale, causal, temporal);
  const at::Tensor &out = f.out, &lse = f.lse;
  if (f.empty) return {out, lse};
  const Problem& pb = f.pb;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention", [&] {
    dispatch_head_dim(q.size(4), [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      constexpr int R = rows_for<D, R32, R64, R128>();
      const dim3 grid = make_grid(pb, NUM_WARPS * R, op);
      attention_fwd_kernel<scalar_t, D, NUM_WARPS, R><<<grid, NUM_WARPS * kWarpSize, 0, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), lse.data_ptr<float>(), layout_of(q, temporal),
          layout_of(k, temporal), layout_of(v, temporal), layout_of(out, temporal),
          layout_of(lse, temporal), pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

// Whether the tensor-core kernels (mma.sync.m16n8k16 with bf16/fp16) run on this device.
inline bool has_mma_16816(const at::Tensor& q) {
  return at::cuda::getDeviceProperties(q.get_device())->major >= 8;
}

inline void check_backward_inputs(const char* op, const at::Tensor& grad_out, const at::Tensor& q,
                                  const at::Tensor& k, const at::Tensor& v, const at::Tensor& out,
                                  const at::Tensor& lse, const std::optional<at::Tensor>& rope_cos,
                                  const std::optional<at::Tensor>& rope_sin, bool temporal) {
  check_inputs(op, q, k, v, rope_cos, rope_sin, temporal ? q.size(1) : q.size(2));
  check_operand(op, "grad_out", grad_out, q);
  check_operand(op, "out", out, q);
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous (the forward's output)");
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.is_contiguous() &&
                  lse.sizes() == q.sizes().slice(0, 4) && lse.device() == q.device(),
              op, ": lse must be the forward's contiguous float32 [B, T, P, H] log-sum-exp, got ",
              lse.scalar_type(), " ", lse.sizes());
}

// delta = rowsum(dO * O) over [B, T, P, H] rows (out and delta contiguous).
template <typename scalar_t, int D>
void launch_delta(const at::Tensor& grad_out, const at::Tensor& out, at::Tensor& delta,
                  cudaStream_t stream) {
  constexpr int kDeltaWarps = 8;
  const int64_t rows = delta.numel();
  const auto blocks = static_cast<unsigned>((rows + kDeltaWarps - 1) / kDeltaWarps);
  attention_bwd_delta_kernel<scalar_t, D><<<blocks, kDeltaWarps * kWarpSize, 0, stream>>>(
      grad_out.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), delta.data_ptr<float>(), rows,
      out.size(1), out.size(2), out.size(3), grad_out.stride(0), grad_out.stride(1),
      grad_out.stride(2), grad_out.stride(3));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// What every backward launcher needs: checked inputs, the gradients and delta, the layouts of
// the operands regrouped for the pass, the problem.
struct BackwardLaunch {
  at::Tensor grad_q, grad_k, grad_v, delta;
  Layout lq, lk, lv, lg, ll, lo;
  Problem pb;
  bool empty;  // nothing to compute
};

inline BackwardLaunch prepare_backward(const char* op, const at::Tensor& grad_out,
                                       const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, const at::Tensor& out,
                                       const at::Tensor& lse,
                                       const std::optional<at::Tensor>& rope_cos,
                                       const std::optional<at::Tensor>& rope_sin, double scale,
                                       bool causal, bool temporal) {
  check_backward_inputs(op, grad_out, q, k, v, out, lse, rope_cos, rope_sin, temporal);
  const auto options = q.options().memory_format(at::MemoryFormat::Contiguous);
  BackwardLaunch b;
  b.grad_q = at::empty(q.sizes(), options);
  b.grad_k = at::empty(q.sizes(), options);
  b.grad_v = at::empty(q.sizes(), options);
  b.empty = q.numel() == 0;
  if (b.empty) return b;
  b.delta = at::empty_like(lse);
  b.pb = make_problem(q, rope_cos, rope_sin, scale, causal, temporal);
  b.lq = layout_of(q, temporal);
  b.lk = layout_of(k, temporal);
  b.lv = layout_of(v, temporal);
  b.lg = layout_of(grad_out, temporal);
  b.ll = layout_of(lse, temporal);
  b.lo = layout_of(b.grad_q, temporal);
  return b;
}

// Tile sizes: NUM_WARPS warps per block, R<D> rows per warp for head dim D.
template <int NUM_WARPS, int R32, int R64, int R128>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(
    const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale, bool causal, bool temporal) {
  const c10::cuda::CUDAGuard guard(q.device());
  BackwardLaunch b = prepare_backward(op, grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale,
                                      causal, temporal);
  if (b.empty) return {b.grad_q, b.grad_k, b.grad_v};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention", [&] {
    dispatch_head_dim(q.size(4), [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      constexpr int R = rows_for<D, R32, R64, R128>();
      launch_delta<scalar_t, D>(grad_out, out, b.delta, stream);
      const dim3 grid = make_grid(b.pb, NUM_WARPS * R, op);
      constexpr int kThreads = NUM_WARPS * kWarpSize;
      attention_bwd_dq_kernel<scalar_t, D, NUM_WARPS, R><<<grid, kThreads, 0, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(), b.delta.data_ptr<float>(),
          b.grad_q.data_ptr<scalar_t>(), b.lq, b.lk, b.lv, b.lg, b.ll, b.lo, b.pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      attention_bwd_dkdv_kernel<scalar_t, D, NUM_WARPS, R><<<grid, kThreads, 0, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(), b.delta.data_ptr<float>(),
          b.grad_k.data_ptr<scalar_t>(), b.grad_v.data_ptr<scalar_t>(), b.lq, b.lk, b.lv, b.lg,
          b.ll, b.lo, b.pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {b.grad_q, b.grad_k, b.grad_v};
}

}  // namespace attention
}  // namespace gfcore
