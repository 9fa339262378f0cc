// ATen side of the factorized attention kernels: argument checks, output tensors, and the
// calls into the pass entry points of attention_launch.cuh (shared with the kernel harness).
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <optional>
#include <string>
#include <tuple>

#include "attention/attention_launch.cuh"

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

inline DeviceLimits device_limits(const at::Tensor& t) {
  const cudaDeviceProp* p = at::cuda::getDeviceProperties(t.get_device());
  return {p->multiProcessorCount, p->major, p->sharedMemPerBlockOptin};
}

inline Strides strides_of(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2), x.stride(3)}; }

inline Attention attention_of(const at::Tensor& q, const std::optional<at::Tensor>& rope_cos,
                              const std::optional<at::Tensor>& rope_sin, double scale, bool causal,
                              bool temporal) {
  return {q.size(0),
          q.size(1),
          q.size(2),
          q.size(3),
          q.size(4),
          temporal,
          causal,
          static_cast<float>(scale),
          rope_cos.has_value() ? rope_cos->data_ptr<float>() : nullptr,
          rope_sin.has_value() ? rope_sin->data_ptr<float>() : nullptr};
}

// The launch functions throw std::invalid_argument for shapes they cannot serve.
template <typename Fn>
void with_torch_errors(const char* op, Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, op, ": ", e.what());
  }
}

// Checks, allocates out [B, T, P, H, D] and lse [B, T, P, H], and runs `pass` (spatial_forward
// or temporal_forward, instantiated for the dtype by the caller's lambda).
template <typename Pass>
std::tuple<at::Tensor, at::Tensor> run_forward(const char* op, const at::Tensor& q, const at::Tensor& k,
                                               const at::Tensor& v, const std::optional<at::Tensor>& rope_cos,
                                               const std::optional<at::Tensor>& rope_sin, double scale,
                                               bool causal, bool temporal, Pass&& pass) {
  check_inputs(op, q, k, v, rope_cos, rope_sin, temporal ? q.size(1) : q.size(2));
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  auto lse = at::empty(q.sizes().slice(0, 4), q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  const Attention a = attention_of(q, rope_cos, rope_sin, scale, causal, temporal);
  const DeviceLimits dev = device_limits(q);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention", [&] {
    const ForwardArgs<scalar_t> f{q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
                                  strides_of(q), strides_of(k), strides_of(v),
                                  out.data_ptr<scalar_t>(), lse.data_ptr<float>()};
    with_torch_errors(op, [&] { C10_CUDA_CHECK(pass(a, f, dev, stream)); });
  });
  return {out, lse};
}

// Checks, allocates the gradients (contiguous) and the delta workspace, and runs `pass`.
template <typename Pass>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward(
    const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin, double scale, bool causal, bool temporal, Pass&& pass) {
  check_backward_inputs(op, grad_out, q, k, v, out, lse, rope_cos, rope_sin, temporal);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto options = q.options().memory_format(at::MemoryFormat::Contiguous);
  auto grad_q = at::empty(q.sizes(), options), grad_k = at::empty(q.sizes(), options),
       grad_v = at::empty(q.sizes(), options);
  if (q.numel() == 0) return {grad_q, grad_k, grad_v};
  auto delta = at::empty_like(lse);
  const Attention a = attention_of(q, rope_cos, rope_sin, scale, causal, temporal);
  const DeviceLimits dev = device_limits(q);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention_bwd", [&] {
    const BackwardArgs<scalar_t> b{grad_out.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(),
                                   v.data_ptr<scalar_t>(),        strides_of(grad_out),  strides_of(q),
                                   strides_of(k),                 strides_of(v),         out.data_ptr<scalar_t>(),
                                   lse.data_ptr<float>(),         grad_q.data_ptr<scalar_t>(),
                                   grad_k.data_ptr<scalar_t>(),   grad_v.data_ptr<scalar_t>(),
                                   delta.data_ptr<float>()};
    with_torch_errors(op, [&] { C10_CUDA_CHECK(pass(a, b, dev, stream)); });
  });
  return {grad_q, grad_k, grad_v};
}

}  // namespace attention
}  // namespace gfcore
