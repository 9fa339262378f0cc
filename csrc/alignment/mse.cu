// gfcore::bias_mse on CUDA: diff = x + bias - y written once, with its column sums (the bias
// gradient up to a scale) and the sum of squares (the loss) reduced on the way; checks,
// outputs and the launch of alignment_launch.cuh.
#include <torch/library.h>

#include "alignment/alignment_checks.h"
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_mse_cuda(const at::Tensor& x, const at::Tensor& bias,
                                                             const at::Tensor& y) {
  check_bias_mse_args(x, bias, y);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  auto diff = at::empty_like(x);
  at::Tensor partial_colsum, partial_squares;
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_mse_cuda", [&] {
    const auto* xp = x.const_data_ptr<scalar_t>();
    const auto* bp = bias.const_data_ptr<scalar_t>();
    const auto* yp = y.const_data_ptr<scalar_t>();
    auto* dp = diff.mutable_data_ptr<scalar_t>();
    const auto plan = plan_bias_mse(xp, bp, yp, dp, rows, cols, device_limits());
    partial_colsum = at::empty({plan.groups, cols}, x.options().dtype(at::kFloat));
    partial_squares = at::empty({plan.groups * plan.col_blocks}, x.options().dtype(at::kFloat));
    C10_CUDA_CHECK(launch_bias_mse(plan, xp, bp, yp, dp, partial_colsum.mutable_data_ptr<float>(),
                                   partial_squares.mutable_data_ptr<float>(), rows, cols,
                                   at::cuda::getCurrentCUDAStream()));
  });
  auto loss = partial_squares.sum().div_(static_cast<double>(x.numel()));
  return {loss, diff, sum_partials(partial_colsum)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) { m.impl("bias_mse", &bias_mse_cuda); }

}  // namespace alignment
}  // namespace gfcore
