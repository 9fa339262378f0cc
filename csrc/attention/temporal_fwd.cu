// gfcore::temporal_attention_fwd on CUDA. T is 8 to 32 in practice: a block of 16 query rows
// sees the whole key/value sequence of one (b, p, h) in one or two shared-memory tiles.
#include <torch/library.h>

#include "attention/attention_host.cuh"

namespace gfcore {
namespace attention {
namespace {

std::tuple<at::Tensor, at::Tensor> temporal_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale, bool causal) {
  return run_forward<4, 4, 4, 4>("gfcore::temporal_attention_fwd", q, k, v, rope_cos, rope_sin,
                                 scale, causal, /*temporal=*/true);
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("temporal_attention_fwd", &gfcore::attention::temporal_attention_fwd_cuda);
}
