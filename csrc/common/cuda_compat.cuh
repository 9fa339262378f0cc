// The one switch between the two compilers of the kernel sources:
//   * nvcc (the torch extension, and the harness tests built for a GPU): the CUDA headers;
//   * g++ with -DGFCORE_SIMT (cpp_tests/kernels): cpp_tests/simt/simt.h, which runs every CUDA
//     thread as a fiber on the CPU and checks barriers, warp collectives and launch rules.
// Kernel headers include this file instead of any CUDA or ATen header, spell static and dynamic
// shared memory with the two macros below, and are launched through launch_kernel(), so the
// harness executes the same source and the same host-side launch logic as the extension.
#pragma once

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <utility>

#if defined(GFCORE_SIMT)
#include "simt.h"
#else
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <cuda_runtime.h>
#endif

namespace gfcore {

#if defined(GFCORE_SIMT)
using bf16 = simt::bfloat16;
using fp16 = simt::half;
// A static shared array `type name dims` (dims like [64][72]): per-block storage of exactly
// that size, NaN-filled at block start.
#define GFCORE_SHARED(type, name, dims) \
  type(&name) dims = *static_cast<type(*) dims>(::simt::shared_array(sizeof(type dims), __FILE__, __LINE__))
// The dynamic shared memory of the launch (exactly the launched bytes), as `type* name`.
#define GFCORE_DYNAMIC_SHARED(type, name) type* name = static_cast<type*>(::simt::dynamic_shared())
#else
using bf16 = c10::BFloat16;  // what AT_DISPATCH hands the launchers
using fp16 = c10::Half;
#define GFCORE_SHARED(type, name, dims) __shared__ __align__(16) type name dims
#define GFCORE_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

// What a launch decision needs to know about the GPU (from cudaDeviceProp on a GPU, from the
// emulated device under the harness).
struct DeviceLimits {
  int sm_count;
  int major;
  size_t smem_per_block_optin;  // bytes of shared memory a block may use after opting in
};

struct LaunchConfig {
  dim3 grid;
  dim3 block;
  size_t smem = 0;  // dynamic shared memory in bytes
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Every kernel launch of gfcore goes through here: `<<<>>>` under nvcc, the fiber scheduler
// under the harness (which also checks the launch rules). Arguments convert to the kernel's
// parameter types first, as a real launch does.
template <typename... Params, typename... Args>
cudaError_t launch_kernel(void (*kernel)(Params...), const LaunchConfig& cfg, cudaStream_t stream,
                          Args&&... args) {
#if defined(GFCORE_SIMT)
  (void)stream;
  std::tuple<std::decay_t<Params>...> params(std::forward<Args>(args)...);
  simt::launch(reinterpret_cast<const void*>(kernel), cfg.grid, cfg.block, cfg.smem,
               [kernel, params]() { std::apply(kernel, params); });
  return cudaSuccess;
#elif defined(__CUDACC__)
  kernel<<<cfg.grid, cfg.block, cfg.smem, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
#else
  static_assert(sizeof...(Params) < 0, "launch_kernel is only available to nvcc and the harness");
  return cudaErrorInvalidValue;
#endif
}

// Opt a kernel in to `bytes` of dynamic shared memory (required above 48 KiB).
template <typename... Params>
cudaError_t allow_dynamic_smem(void (*kernel)(Params...), size_t bytes) {
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

}  // namespace gfcore
