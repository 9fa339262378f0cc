// The one place where gfcore's operator schemas are declared.
//
// Kernels register per backend with TORCH_LIBRARY_IMPL in each family's folder
// (csrc/<family>/*.cpp for CPU, csrc/<family>/*.cu for CUDA). Fake kernels (for
// torch.compile) and autograd formulas are registered from Python in gfcore/ops/.
// C++ users link the same sources without Python (CMakeLists.txt).
#include <torch/library.h>

TORCH_LIBRARY(gfcore, m) {
  // ---- Geometry alignment loss (csrc/alignment) ----------------------------------------
  // Inputs are 2-D [rows, cols] and contiguous; `x` is a GEMM output without its bias,
  // so that the bias add is fused into the memory-bound kernel that follows the GEMM.
  // out = silu(x + bias)
  m.def("bias_silu(Tensor x, Tensor bias) -> Tensor");
  // grad_x = grad_out * silu'(x + bias); grad_bias = sum over rows of grad_x. Reductions
  // (losses, cosines, norms, column sums) are float32, float64 for float64 inputs.
  m.def("bias_silu_backward(Tensor grad_out, Tensor x, Tensor bias) -> (Tensor, Tensor)");
  // z = x + bias; zhat = z / max(|z|, eps); cos = <z, y> / (max(|z|, eps) max(|y|, eps));
  // norms[:, 0] = |z|, norms[:, 1] = |y| (fp32, kept for the backward).
  m.def("bias_normalize_cosine(Tensor x, Tensor bias, Tensor y, float eps) -> (Tensor zhat, Tensor cos, Tensor norms)");
  // Gradient of the above with respect to x (and bias = its column sum); y is a constant.
  m.def("bias_normalize_cosine_backward(Tensor grad_zhat, Tensor grad_cos, Tensor zhat, Tensor y, Tensor cos, Tensor norms, float eps) -> (Tensor, Tensor)");
  // diff = x + bias - y; loss = mean(diff^2) (fp32 scalar); diff_colsum = sum over rows of
  // diff (fp32). The gradient of loss w.r.t. x is 2 * diff / numel: computed in one pass.
  m.def("bias_mse(Tensor x, Tensor bias, Tensor y) -> (Tensor loss, Tensor diff, Tensor diff_colsum)");

  // ---- Factorized attention (csrc/attention) ------------------------------------------
  // q, k, v: [B, T, P, H, D], any strides with a unit stride on D (e.g. views of a packed
  // qkv); out and the gradients: [B, T, P, H, D] contiguous in q's dtype. spatial attends over
  // P within each (b, t, h), temporal over T within each (b, p, h) (key j <= query i if causal).
  // rope_cos/rope_sin: optional float32 [S, D] rotate-half tables (S = P or T) applied to q, k.
  // lse: float32 [B, T, P, H] log-sum-exp of the scaled scores, saved for the backward.
  m.def("spatial_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? rope_cos, Tensor? rope_sin, float scale) -> (Tensor out, Tensor lse)");
  m.def("spatial_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? rope_cos, Tensor? rope_sin, float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  m.def("temporal_attention_fwd(Tensor q, Tensor k, Tensor v, Tensor? rope_cos, Tensor? rope_sin, float scale, bool causal) -> (Tensor out, Tensor lse)");
  m.def("temporal_attention_bwd(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? rope_cos, Tensor? rope_sin, float scale, bool causal) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)");
  // RoPE (rotate-half) on q and k in one op, for the SDPA path: q, k [B, T, P, H, D] (any
  // strides, unit stride on D), cos/sin [S, D] float32 (S = T if temporal else P); outputs
  // contiguous in q's dtype. adjoint: the transpose (the backward), x cos + rotate_half^T(x sin).
  m.def("rope_qk(Tensor q, Tensor k, Tensor cos, Tensor sin, bool temporal, bool adjoint) -> (Tensor q_out, Tensor k_out)");
}
