// gfcore::spatial_attention_fwd on CUDA (P up to 4096): tensor cores on sm80+, else 8 warps
// of fp32 FMAs sharing each key/value tile.
#include <torch/library.h>

#include "attention/attention_host.cuh"

namespace gfcore {
namespace attention {
namespace {

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
