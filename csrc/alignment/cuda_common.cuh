// ATen side of the alignment-loss CUDA launchers: device limits, dtype dispatch, and the
// tensor form of the column-sum second stage. Kernels: alignment_kernels.cuh; launch logic
// shared with the harness: alignment_launch.cuh.
#pragma once
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include "alignment/alignment_launch.cuh"

namespace gfcore {
namespace alignment {

inline DeviceLimits device_limits() {
  const cudaDeviceProp* p = at::cuda::getCurrentDeviceProperties();
  return {p->multiProcessorCount, p->major, p->sharedMemPerBlockOptin};
}

// Sums partial[groups, cols] (float32) over groups into a new [cols] tensor (sum_partials.cu).
at::Tensor sum_partials(const at::Tensor& partial);

// Dispatch over the 16-bit and 32-bit float types that the CUDA kernels support.
#define GFCORE_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

inline void check_cuda_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf,
              name, ": the CUDA kernels take float32, bfloat16 or float16, got ", t.scalar_type(),
              " (float64 runs on the CPU kernels or impl='reference')");
}

}  // namespace alignment
}  // namespace gfcore
