// Argument checks shared by the CPU and CUDA kernels of the alignment-loss ops.
#pragma once
#include <ATen/ATen.h>

namespace gfcore {
namespace alignment {

// A [rows, cols] row-major matrix that the kernels can walk with plain pointer arithmetic.
inline void check_matrix(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D [rows, cols], got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), name, " must be floating point, got ", t.scalar_type());
}

inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the shape of ", ref_name, " ", ref.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the dtype of ", ref_name, " (",
              ref.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), name, " is on ", t.device(), " but ", ref_name, " is on ",
              ref.device());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_bias(const at::Tensor& bias, const at::Tensor& x) {
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == x.size(1), "bias must be 1-D of size ", x.size(1),
              " (the columns of x), got shape ", bias.sizes());
  TORCH_CHECK(bias.scalar_type() == x.scalar_type(), "bias must have the dtype of x (", x.scalar_type(),
              "), got ", bias.scalar_type());
  TORCH_CHECK(bias.device() == x.device(), "bias is on ", bias.device(), " but x is on ", x.device());
  TORCH_CHECK(bias.is_contiguous(), "bias must be contiguous");
}

// Per-row statistics (cosine [rows], norms [rows, 2]) are float32, float64 for float64 data.
inline at::ScalarType stat_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_stats(const at::Tensor& cos, const at::Tensor& norms, const at::Tensor& ref) {
  const auto rows = ref.size(0);
  const auto want = stat_type(ref.scalar_type());
  TORCH_CHECK(cos.dim() == 1 && cos.size(0) == rows && cos.scalar_type() == want && cos.is_contiguous(),
              "cos must be contiguous ", want, " of shape [", rows, "], got ", cos.scalar_type(), " ", cos.sizes());
  TORCH_CHECK(norms.dim() == 2 && norms.size(0) == rows && norms.size(1) == 2 && norms.scalar_type() == want &&
                  norms.is_contiguous(),
              "norms must be contiguous ", want, " of shape [", rows, ", 2], got ", norms.scalar_type(), " ",
              norms.sizes());
  TORCH_CHECK(cos.device() == ref.device() && norms.device() == ref.device(),
              "cos and norms must be on the device of the data (", ref.device(), ")");
}

inline void check_grad_cos(const at::Tensor& grad_cos, const at::Tensor& cos) {
  TORCH_CHECK(grad_cos.sizes() == cos.sizes() && grad_cos.scalar_type() == cos.scalar_type() &&
                  grad_cos.is_contiguous() && grad_cos.device() == cos.device(),
              "grad_cos must be contiguous ", cos.scalar_type(), " of shape ", cos.sizes(), " on ", cos.device(),
              ", got ", grad_cos.scalar_type(), " ", grad_cos.sizes(), " on ", grad_cos.device());
}

// ---- Each op's argument contract, shared by its CPU and CUDA entry points ----------------

inline void check_bias_silu_args(const at::Tensor& x, const at::Tensor& bias) {
  check_matrix(x, "x");
  check_bias(bias, x);
}

inline void check_bias_silu_backward_args(const at::Tensor& grad_out, const at::Tensor& x,
                                          const at::Tensor& bias) {
  check_bias_silu_args(x, bias);
  check_like(grad_out, x, "grad_out", "x");
}

// bias_normalize_cosine and bias_mse: x + bias against the target y.
inline void check_bias_target_args(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& y) {
  check_bias_silu_args(x, bias);
  check_like(y, x, "y", "x");
}

inline void check_bias_mse_args(const at::Tensor& x, const at::Tensor& bias, const at::Tensor& y) {
  check_bias_target_args(x, bias, y);
  TORCH_CHECK(x.numel() > 0, "x must not be empty");
}

inline void check_normalize_cosine_backward_args(const at::Tensor& grad_zhat, const at::Tensor& grad_cos,
                                                 const at::Tensor& zhat, const at::Tensor& y,
                                                 const at::Tensor& cos, const at::Tensor& norms) {
  check_matrix(zhat, "zhat");
  check_like(grad_zhat, zhat, "grad_zhat", "zhat");
  check_like(y, zhat, "y", "zhat");
  check_stats(cos, norms, zhat);
  check_grad_cos(grad_cos, cos);
}

}  // namespace alignment
}  // namespace gfcore
