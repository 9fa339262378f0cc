// gfcore::spatial_attention_fwd on CUDA (P up to 4096): tensor cores on sm80+, else 8 warps
// of fp32 FMAs sharing each key/value tile.
#include <torch/library.h>

#include "attention/attention_host.cuh"
#include "attention/attention_mma.cuh"

namespace gfcore {
namespace attention {
namespace {

// The forward on tensor cores (attention_mma.cuh); same checks, outputs and LSE convention as
// run_forward, which serves devices older than sm80.
std::tuple<at::Tensor, at::Tensor> run_forward_mma(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale, bool causal, bool temporal) {
  const c10::cuda::CUDAGuard guard(q.device());
  const ForwardLaunch f = prepare_forward(op, q, k, v, rope_cos, rope_sin, scale, causal, temporal);
  const at::Tensor &out = f.out, &lse = f.lse;
  if (f.empty) return {out, lse};
  const Problem& pb = f.pb;
  const auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid = make_grid(pb, kMmaBlockM, op);
  AT_DISPATCH_REDUCED_FLOATING_TYPES(q.scalar_type(), "gfcore_attention_mma", [&] {
    dispatch_head_dim(q.size(4), [&](auto head_dim) {
      constexpr int D = decltype(head_dim)::value;
      attention_fwd_mma_kernel<scalar_t, D><<<grid, kMmaWarps * kWarpSize, 0, stream>>>(
          q.data_ptr<scalar_t>(), k.data_ptr<scalar_t>(), v.data_ptr<scalar_t>(),
          out.data_ptr<scalar_t>(), lse.data_ptr<float>(), layout_of(q, temporal),
          layout_of(k, temporal), layout_of(v, temporal), layout_of(out, temporal),
          layout_of(lse, temporal), pb);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor> spatial_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale) {
  if (has_mma_16816(q))
    return run_forward_mma("gfcore::spatial_attention_fwd", q, k, v, rope_cos, rope_sin, scale,
                           false, /*temporal=*/false);
  return run_forward<8, 8, 4, 2>("gfcore::spatial_attention_fwd", q, k, v, rope_cos, rope_sin,
                                 scale, false, /*temporal=*/false);
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("spatial_attention_fwd", &gfcore::attention::spatial_attention_fwd_cuda);
}
