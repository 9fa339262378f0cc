// gfcore::rope_qk on CUDA: checks and outputs, then launch_rope_qk of rope.cuh (one launch
// rotates q and k).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "attention/rope.cuh"

namespace gfcore {
namespace attention {
namespace {

RopeStrides rope_strides(const at::Tensor& x) { return {x.stride(0), x.stride(1), x.stride(2), x.stride(3)}; }

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k, at::Tensor& q_out, at::Tensor& k_out, const at::Tensor& cos,
         const at::Tensor& sin, const RopeShape& s, bool adjoint) {
  const cudaDeviceProp* p = at::cuda::getDeviceProperties(q.get_device());
  const DeviceLimits dev{p->multiProcessorCount, p->major, p->sharedMemPerBlockOptin};
  C10_CUDA_CHECK(launch_rope_qk<T>(static_cast<const T*>(q.const_data_ptr()), static_cast<const T*>(k.const_data_ptr()),
                                   static_cast<T*>(q_out.mutable_data_ptr()), static_cast<T*>(k_out.mutable_data_ptr()),
                                   rope_strides(q), rope_strides(k), cos.const_data_ptr<float>(),
                                   sin.const_data_ptr<float>(), s, adjoint, dev, at::cuda::getCurrentCUDAStream()));
}

std::tuple<at::Tensor, at::Tensor> rope_qk_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                const at::Tensor& sin, bool temporal, bool adjoint) {
  const char* op = "gfcore::rope_qk";
  TORCH_CHECK(q.dim() == 5 && q.is_cuda(), op, ": q must be a CUDA [B, T, P, H, D] tensor, got ", q.sizes());
  TORCH_CHECK(k.sizes() == q.sizes() && k.scalar_type() == q.scalar_type() && k.device() == q.device(), op,
              ": k must match q in shape, dtype and device");
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": the CUDA kernel takes float32, bfloat16 or float16, got ", dtype);
  const int64_t D = q.size(4), S = temporal ? q.size(1) : q.size(2);
  TORCH_CHECK(D % 2 == 0, op, ": the head dim must be even, got ", D);
  TORCH_CHECK(D <= 1 || (q.stride(4) == 1 && k.stride(4) == 1), op, ": q and k must have unit stride on D");
  for (const at::Tensor* t : {&cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->device() == q.device() && t->dim() == 2 &&
                    t->size(0) == S && t->size(1) == D,
                op, ": cos and sin must be contiguous float32 [", S, ", ", D, "] on q's device, got ", t->sizes());
  }
  const c10::cuda::CUDAGuard guard(q.device());
  const auto options = q.options().memory_format(at::MemoryFormat::Contiguous);
  auto q_out = at::empty(q.sizes(), options), k_out = at::empty(q.sizes(), options);
  const RopeShape s{q.size(0), q.size(1), q.size(2), q.size(3), D, temporal};
  if (dtype == at::kFloat)
    run<float>(q, k, q_out, k_out, cos, sin, s, adjoint);
  else if (dtype == at::kBFloat16)
    run<bf16>(q, k, q_out, k_out, cos, sin, s, adjoint);
  else
    run<fp16>(q, k, q_out, k_out, cos, sin, s, adjoint);
  return {q_out, k_out};
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) { m.impl("rope_qk", &gfcore::attention::rope_qk_cuda); }
