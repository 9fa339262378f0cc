// gfcore::spatial_attention_bwd on CUDA: delta = rowsum(dO * O), then dQ and dK/dV kernels
// that recompute the probabilities from the forward's log-sum-exp (tensor cores on sm80+).
#include <torch/library.h>

#include "attention/attention_host.cuh"
#include "attention/attention_mma_bwd.cuh"

namespace gfcore {
namespace attention {
namespace {

// The backward on tensor cores (attention_mma_bwd.cuh); same checks and outputs as
// run_backward, which serves devices older than sm80.
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_backward_mma(
    const char* op, const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale, bool causal, bool temporal) {
  const c10::cuda::CUDAGuard guard(q.device());
  BackwardLaunch b = prepare_backward(op, grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale,
                                      causal, temporal);
  if (b.empty) return {b.grad_q, b.grad_k, b.grad_v};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid = make_grid(b.pb, kMmaBlockM, op);
  constexpr int kThreads = kMmaWarps * kWarpSize;
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention_mma_bwd", [&] {
    dispatch_head_dim(q.size(4), [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      using Tiles = MmaBwdTiles<D>;
      launch_delta<scalar_t, D>(grad_out, out, b.delta, stream);
      // Above 48 KiB a kernel must opt in to its dynamic shared memory.
      const auto dq_kernel = attention_bwd_dq_mma_kernel<scalar_t, D>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(dq_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(Tiles::kDqBytes)));
      dq_kernel<<<grid, kThreads, Tiles::kDqBytes, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(), b.delta.data_ptr<float>(),
          b.grad_q.data_ptr<scalar_t>(), b.lq, b.lk, b.lv, b.lg, b.ll, b.lo, b.pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const auto dkdv_kernel = attention_bwd_dkdv_mma_kernel<scalar_t, D>;
      C10_CUDA_CHECK(cudaFuncSetAttribute(dkdv_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(Tiles::kDkdvBytes)));
      dkdv_kernel<<<grid, kThreads, Tiles::kDkdvBytes, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          grad_out.data_ptr<scalar_t>(), lse.data_ptr<float>(), b.delta.data_ptr<float>(),
          b.grad_k.data_ptr<scalar_t>(), b.grad_v.data_ptr<scalar_t>(), b.lq, b.lk, b.lv, b.lg,
          b.ll, b.lo, b.pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {b.grad_q, b.grad_k, b.grad_v};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spatial_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin, double scale) {
  if (has_mma_16816(q))
    return run_backward_mma("gfcore::spatial_attention_bwd", grad_out, q, k, v, out, lse,
                            rope_cos, rope_sin, scale, false, /*temporal=*/false);
  return run_backward<4, 4, 4, 2>("gfcore::spatial_attention_bwd", grad_out, q, k, v, out, lse,
                                  rope_cos, rope_sin, scale, false, /*temporal=*/false);
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("spatial_attention_bwd", &gfcore::attention::spatial_attention_bwd_cuda);
}
