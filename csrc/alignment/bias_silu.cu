// gfcore::bias_silu and gfcore::bias_silu_backward on CUDA: checks, outputs, and the launches
// of alignment_launch.cuh (kernels in alignment_kernels.cuh).
#include <torch/library.h>

#include "alignment/alignment_checks.h"
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {
namespace {

at::Tensor bias_silu_cuda(const at::Tensor& x, const at::Tensor& bias) {
  check_bias_silu_args(x, bias);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_silu_cuda", [&] {
    C10_CUDA_CHECK(launch_bias_silu(x.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(),
                                    out.mutable_data_ptr<scalar_t>(), x.size(0), x.size(1), device_limits(),
                                    at::cuda::getCurrentCUDAStream()));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_silu_backward_cuda(const at::Tensor& grad_out, const at::Tensor& x,
                                                            const at::Tensor& bias) {
  check_bias_silu_backward_args(grad_out, x, bias);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto grad_x = at::empty_like(x);
  const int64_t rows = x.size(0), cols = x.size(1);
  // Empty x: nothing to launch (cols == 0 would also make the launch plan divide by zero).
  if (x.numel() == 0) return {grad_x, at::zeros({cols}, x.options().dtype(at::kFloat))};
  at::Tensor partial;
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_silu_backward_cuda", [&] {
    const auto* gp = grad_out.const_data_ptr<scalar_t>();
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* bp = bias.const_data_ptr<scalar_t>();
    auto* gxp = grad_x.mutable_data_ptr<scalar_t>();
    const auto plan = plan_bias_silu_backward(gp, xp, bp, gxp, rows, cols, device_limits());
    partial = at::empty({plan.groups, cols}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(launch_bias_silu_backward(plan, gp, xp, bp, gxp, partial.mutable_data_ptr<float>(), rows, cols,
                                             at::cuda::getCurrentCUDAStream()));
  });
  return {grad_x, sum_partials(partial)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("bias_silu", &bias_silu_cuda);
  m.impl("bias_silu_backward", &bias_silu_backward_cuda);
}

}  // namespace alignment
}  // namespace gfcore
