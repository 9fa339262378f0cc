// RoPE (rotate-half) on q and k in one launch: the rotation of the spatial pass's SDPA path
// (gfcore.ops.attention, impl "sdpa"), one elementwise kernel for both operands instead of a
// chain of PyTorch ops per operand. For each row of D channels of a [B, T, P, H, D] operand,
// at the row's position on the attended axis (T for the temporal pass, P for the spatial one):
//   forward: y = x cos + rotate_half(x) sin,        rotate_half([x1, x2]) = [-x2, x1];
//   adjoint: y = x cos + rotate_half^T(x sin),      rotate_half^T([y1, y2]) = [y2, -y1]
// (the adjoint is the backward: the gradient with respect to the un-rotated input). A thread
// owns one channel pair (j, j + D/2) of one row; fp32 math, outputs [B, T, P, H, D] contiguous
// in the inputs' type; inputs may have any strides with a unit stride on D.
// The harness (cpp_tests/kernels) runs it from this source on the CPU.
#pragma once

#include <algorithm>

#include "common/cuda_compat.cuh"

namespace gfcore {
namespace attention {

struct RopeShape {
  int64_t B, T, P, H, D;
  bool temporal;  // position = t (else p)
};

// Element strides of a [B, T, P, H, D] input (D has unit stride).
struct RopeStrides {
  int64_t b, t, p, h;
};

constexpr int kRopeThreads = 256;

// Grid: (blocks, 2): y = 0 rotates q, y = 1 rotates k.
template <typename T>
__global__ void __launch_bounds__(kRopeThreads)
    rope_qk_kernel(const T* __restrict__ q, const T* __restrict__ k, T* __restrict__ q_out, T* __restrict__ k_out,
                   RopeStrides sq, RopeStrides sk, const float* __restrict__ cos, const float* __restrict__ sin,
                   RopeShape s, bool adjoint) {
  const int64_t half = s.D / 2;
  const int64_t pairs = s.B * s.T * s.P * s.H * half;
  const bool is_k = blockIdx.y == 1;
  const T* in = is_k ? k : q;
  T* out = is_k ? k_out : q_out;
  const RopeStrides st = is_k ? sk : sq;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = i % half;
    int64_t row = i / half;  // the row of the contiguous output, h fastest
    const int64_t h = row % s.H;
    const int64_t p = (row / s.H) % s.P;
    const int64_t t = (row / (s.H * s.P)) % s.T;
    const int64_t b = row / (s.H * s.P * s.T);
    const T* x = in + b * st.b + t * st.t + p * st.p + h * st.h;
    const float x1 = static_cast<float>(x[j]), x2 = static_cast<float>(x[j + half]);
    const int64_t base = (s.temporal ? t : p) * s.D;
    const float c1 = cos[base + j], c2 = cos[base + j + half];
    const float s1 = sin[base + j], s2 = sin[base + j + half];
    float y1, y2;
    if (!adjoint) {
      y1 = x1 * c1 - x2 * s1;
      y2 = x2 * c2 + x1 * s2;
    } else {
      y1 = x1 * c1 + x2 * s2;
      y2 = x2 * c2 - x1 * s1;
    }
    T* o = out + row * s.D;
    o[j] = static_cast<T>(y1);
    o[j + half] = static_cast<T>(y2);
  }
}

// q_out and k_out are [B, T, P, H, D] contiguous; cos and sin [S, D] float32 contiguous.
template <typename T>
cudaError_t launch_rope_qk(const T* q, const T* k, T* q_out, T* k_out, RopeStrides sq, RopeStrides sk,
                           const float* cos, const float* sin, RopeShape s, bool adjoint, const DeviceLimits& dev,
                           cudaStream_t stream) {
  const int64_t pairs = s.B * s.T * s.P * s.H * (s.D / 2);
  if (pairs == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>(ceil_div(pairs, kRopeThreads), int64_t(dev.sm_count) * 8);
  return launch_kernel(rope_qk_kernel<T>, {dim3(static_cast<unsigned>(blocks), 2), dim3(kRopeThreads), 0}, stream, q,
                       k, q_out, k_out, sq, sk, cos, sin, s, adjoint);
}

}  // namespace attention
}  // namespace gfcore
