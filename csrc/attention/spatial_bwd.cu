// gfcore::spatial_attention_bwd on CUDA: delta = rowsum(dO * O), then dQ and dK/dV kernels
// that recompute the probabilities from the forward's log-sum-exp (tensor cores on sm80+).
#include <torch/library.h>

#include "attention/attention_host.cuh"

namespace gfcore {
namespace attention {
namespace {

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
