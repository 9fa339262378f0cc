// gfcore::spatial_attention_fwd on CUDA: checks and outputs (attention_host.cuh), then
// spatial_forward of attention_launch.cuh, which picks the kernel for the device.
#include <torch/library.h>

#include "attention/attention_host.cuh"

namespace gfcore {
namespace attention {
namespace {

std::tuple<at::Tensor, at::Tensor> spatial_attention_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const std::optional<at::Tensor>& rope_cos, const std::optional<at::Tensor>& rope_sin,
    double scale) {
  return run_forward("gfcore::spatial_attention_fwd", q, k, v, rope_cos, rope_sin, scale,
                     false, /*temporal=*/false,
                     [](const auto& a, const auto& f, const DeviceLimits& dev, cudaStream_t stream) {
                       return spatial_forward(a, f, dev, stream);
                     });
}

}  // namespace
}  // namespace attention
}  // namespace gfcore

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("spatial_attention_fwd", &gfcore::attention::spatial_attention_fwd_cuda);
}
