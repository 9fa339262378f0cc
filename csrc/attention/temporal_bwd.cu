// gfcore::temporal_attention_bwd on CUDA. T <= 64 (the usual case): one kernel per sequence
// (attention_temporal_bwd.cuh). Longer sequences, or a device with too little shared memory:
// delta = rowsum(dO * O), then dQ and dK/dV kernels that recompute the probabilities from the
// forward's log-sum-exp.
#include <torch/library.h>

#include "attention/attention_host.cuh"
#include "attention/attention_temporal_bwd.cuh"

namespace gfcore {
namespace attention {
namespace {

bool fused_backward_fits(const at::Tensor& q) {
  const int64_t T = q.size(1);
  return T <= kFusedBwdMaxSeq &&
         fused_bwd_smem_bytes(static_cast<int>(T), static_cast<int>(q.size(4))) <=
             at::cuda::getDeviceProperties(q.get_device())->sharedMemPerBlockOptin;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward_fused(
    const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale, bool causal) {
  const c10::cuda::CUDAGuard guard(q.device());
  BackwardLaunch b = prepare_backward(op, grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale,
                                      causal, /*temporal=*/true);
  if (b.empty) return {b.grad_q, b.grad_k, b.grad_v};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const Layout l_out = layout_of(out, /*temporal=*/true);
  const dim3 grid = make_grid(b.pb, kFusedBwdMaxSeq, op);  // one block per sequence
  const size_t bytes = fused_bwd_smem_bytes(b.pb.seq_len, static_cast<int>(q.size(4)));
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention_fused_bwd", [&] {
    dispatch_head_dim(q.size(4), [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      const auto kernel = attention_bwd_fused_kernel<scalar_t, D>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
      kernel<<<grid, kFusedBwdThreads, bytes, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          grad_out.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse.data_ptr<float>(),
          b.grad_q.data_ptr<scalar_t>(), b.grad_k.data_ptr<scalar_t>(),
          b.grad_v.data_ptr<scalar_t>(), b.lq, b.lk, b.lv, b.lg, l_out, b.ll, b.lo, b.pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {b.grad_q, b.grad_k, b.grad_v};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin, double scale, bool causal) {
  if (fused_backward_fits(q))
    return run_backward_fused("gfcore::temporal_attention_bwd", grad_out, q, k, v, out, lse,
                              rope_cos, rope_sin, scale, causal);
  return run_backward<4, 4, 4, 2>("gfcore::temporal_attention_bwd", grad_out, q, k, v, out, lse,
                                  rope_cos, rope_sin, scale, causal, /*temporal=*/true);
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("temporal_attention_bwd", &gfcore::attention::temporal_attention_bwd_cuda);
}
