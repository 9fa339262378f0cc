// gfcore::temporal_attention_fwd on CUDA: checks and outputs (attention_host.cuh), then
// temporal_forward of attention_launch.cuh, which picks the kernel for the device.
#include <torch/library.h>

#include "attention/attention_host.cuh"

namespace gfcore {
namespace attention {
namespace {

std::tuple<at::Tensor, at::Tensor> temporal_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale, bool causal) {
  return run_forward("gfcore::temporal_attention_fwd", q, k, v, rope_cos, rope_sin, scale,
                     causal, /*temporal=*/true,
                     [](const auto& a, const auto& f, const DeviceLimits& dev, cudaStream_t stream) {
                       return temporal_forward(a, f, dev, stream);
                     });
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("temporal_attention_fwd", &gfcore::attention::temporal_attention_fwd_cuda);
}
