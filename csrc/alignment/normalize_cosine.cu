// gfcore::bias_normalize_cosine and its backward on CUDA: checks, outputs, and the launches of
// alignment_launch.cuh (a row over one to eight warps, held in registers: alignment_kernels.cuh).
#include <torch/library.h>

#include "alignment/alignment_checks.h"
#include "alignment/cuda_common.cuh"

namespace gfcore {
namespace alignment {
namespace {

// row_layout() throws std::invalid_argument for rows too wide for the kernels.
template <typename Fn>
void with_row_check(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK(false, e.what());
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_normalize_cosine_cuda(const at::Tensor& x,
                                                                          const at::Tensor& bias,
                                                                          const at::Tensor& y, double eps) {
  check_bias_target_args(x, bias, y);
  check_cuda_dtype(x, "x");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), cols = x.size(1);
  auto zhat = at::empty_like(x);
  auto cos = at::empty({rows}, x.options().dtype(at::kFloat));
  auto norms = at::empty({rows, 2}, x.options().dtype(at::kFloat));
  if (rows == 0) return {zhat, cos, norms};
  GFCORE_DISPATCH_CUDA_FLOATS(x.scalar_type(), "bias_normalize_cosine_cuda", [&] {
    with_row_check([&] {
      C10_CUDA_CHECK(launch_bias_normalize_cosine(
          x.const_data_ptr<scalar_t>(), bias.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
          zhat.mutable_data_ptr<scalar_t>(), cos.mutable_data_ptr<float>(), norms.mutable_data_ptr<float>(), rows,
          cols, static_cast<float>(eps), device_limits(), at::cuda::getCurrentCUDAStream()));
    });
  });
  return {zhat, cos, norms};
}

std::tuple<at::Tensor, at::Tensor> bias_normalize_cosine_backward_cuda(const at::Tensor& grad_zhat,
                                                                       const at::Tensor& grad_cos,
                                                                       const at::Tensor& zhat, const at::Tensor& y,
                                                                       const at::Tensor& cos, const at::Tensor& norms,
                                                                       double eps) {
  check_normalize_cosine_backward_args(grad_zhat, grad_cos, zhat, y, cos, norms);
  check_cuda_dtype(zhat, "zhat");
  const c10::cuda::CUDAGuard guard(zhat.device());
  const int64_t rows = zhat.size(0), cols = zhat.size(1);
  auto grad_x = at::empty_like(zhat);
  if (rows == 0) return {grad_x, at::zeros({cols}, zhat.options().dtype(at::kFloat))};
  at::Tensor partial;
  GFCORE_DISPATCH_CUDA_FLOATS(zhat.scalar_type(), "bias_normalize_cosine_backward_cuda", [&] {
    const auto* gp = grad_zhat.const_data_ptr<scalar_t>();
    const auto* zp = zhat.const_data_ptr<scalar_t>();
    const auto* yp = y.const_data_ptr<scalar_t>();
    auto* gxp = grad_x.mutable_data_ptr<scalar_t>();
    with_row_check([&] {
      const auto plan = plan_bias_normalize_cosine_backward(gp, zp, yp, gxp, rows, cols, device_limits());
      partial = at::empty({plan.blocks, cols}, zhat.options().dtype(at::kFloat));
      C10_CUDA_CHECK(launch_bias_normalize_cosine_backward(
          plan, gp, grad_cos.const_data_ptr<float>(), zp, yp, cos.const_data_ptr<float>(),
          norms.const_data_ptr<float>(), gxp, partial.mutable_data_ptr<float>(), rows, cols, static_cast<float>(eps),
          at::cuda::getCurrentCUDAStream()));
    });
  });
  return {grad_x, sum_partials(partial)};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CUDA, m) {
  m.impl("bias_normalize_cosine", &bias_normalize_cosine_cuda);
  m.impl("bias_normalize_cosine_backward", &bias_normalize_cosine_backward_cuda);
}

}  // namespace alignment
}  // namespace gfcore
