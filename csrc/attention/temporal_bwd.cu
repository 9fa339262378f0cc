// gfcore::temporal_attention_bwd on CUDA: checks and gradients (attention_host.cuh), then
// temporal_backward of attention_launch.cuh, which picks the kernels for the device.
#include <torch/library.h>

#include "attention/attention_host.cuh"

namespace gfcore {
namespace attention {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> temporal_attention_bwd_cuda(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const std::optional<at::Tensor>& rope_cos,
    const std::optional<at::Tensor>& rope_sin, double scale, bool causal) {
  return run_backward("gfcore::temporal_attention_bwd", grad_out, q, k, v, out, lse, rope_cos, rope_sin, scale,
                      causal, /*temporal=*/true,
                      [](const auto& a, const auto& b, const DeviceLimits& dev, cudaStream_t stream) {
                        return temporal_backward(a, b, dev, stream);
                      });
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("temporal_attention_bwd", &gfcore::attention::temporal_attention_bwd_cuda);
}
