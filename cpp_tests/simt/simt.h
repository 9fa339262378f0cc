// simt.h: enough of CUDA to run gfcore's kernel sources on a CPU, with checks a GPU lacks.
//
// Compiled with g++ (-DGFCORE_SIMT, see cpp_tests/kernels/Makefile), the kernel headers of
// csrc/ include this file instead of the CUDA headers (csrc/common/cuda_compat.cuh). Each CUDA
// thread of a block is a user-space fiber (ucontext) on one OS thread; the scheduler runs a
// fiber until it blocks at a __syncthreads or a warp collective, then picks the next one by the
// launch's schedule (forward, reverse, random, warp-serial). What it enforces:
//   * __syncthreads: every live thread of the block waits at the same call site; a thread that
//     exits while others wait, or two sites at once, is an error;
//   * warp collectives (__shfl_*_sync, __syncwarp, mma): every lane named in the mask arrives
//     at the same call site with the same mask; an absent, exited or elsewhere-waiting lane is
//     an error;
//   * no progress possible (a deadlock) is an error;
//   * shared memory: every array is its own heap allocation of exactly its size, filled with
//     0xFF bytes (NaN in fp32/bf16/fp16) when the block starts, so AddressSanitizer sees any
//     access past it and a read-before-write shows up as NaN;
//   * launch rules: <= 1024 threads, grid.y/z <= 65535, dynamic shared memory above 48 KiB
//     only after the opt-in attribute, static + dynamic within the device's per-block limit.
// Errors print a tagged line ("simt[barrier]: ...") and abort the process.
//
// Not modelled (say so wherever results are reported): weak memory ordering and missing
// __threadfence, spin-waits between blocks (blocks run one after another), __activemask, and
// the inline-asm text itself (nvcc/ptxas check it; a GPU executes it).
#pragma once

#include <math.h>  // expf, exp2f, log2f, sqrtf, fmaxf, ... in the global namespace, as kernels call them

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>

// ---- Keywords -------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace simt {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};

// ---- Schedules --------------------------------------------------------------------------------
enum class Order {
  kForward,            // round robin over the threads, increasing index
  kReverse,            // round robin, decreasing index
  kRandom,             // any runnable thread, chosen at random
  kWarpSerial,         // the lowest warp runs as far as it can before the next one starts
  kWarpSerialReverse,  // the same, highest warp first
  kWarpSerialRandom,   // the same, warps in a random priority order per block
};
const char* order_name(Order order);
bool parse_order(const std::string& name, Order* order);

// A device the launches are checked against (limits of the real GPU of that architecture).
struct Device {
  const char* name;
  int major, minor;
  int sm_count;
  size_t smem_per_block_optin;  // bytes a block may use after opting in
  size_t smem_per_sm;
  int max_threads_per_sm;
};
const Device& sm80();  // A100
const Device& sm90();  // H100
const Device& sm70();  // V100: no mma.m16n8k16, 96 KiB of shared memory per block

// The device and schedule that following launches use; the seed drives the random orders.
void configure(const Device& device, Order order, uint64_t seed);
const Device& current_device();

// ---- Thread identity ------------------------------------------------------------------------
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();

// ---- Synchronisation --------------------------------------------------------------------------
void syncthreads(const char* file, int line);

// A warp collective: every lane of `mask` deposits `in_words` 32-bit words; when all have
// arrived, `op` maps the 32 lanes' inputs to their outputs (lanes outside the mask: untouched).
using CollectiveOp = void (*)(const uint32_t (*in)[16], uint32_t (*out)[16], uint32_t mask, const void* ctx);
void warp_collective(const char* what, const char* file, int line, uint32_t mask, const uint32_t* in,
                     int in_words, uint32_t* out, int out_words, CollectiveOp op, const void* ctx);

template <typename T>
T shfl(const char* what, const char* file, int line, uint32_t mask, T value, int src_param, int mode);

// ---- Shared memory -----------------------------------------------------------------------------
void* shared_array(size_t bytes, const char* file, int line);
void* dynamic_shared();

// ---- Launches -------------------------------------------------------------------------------
void set_max_dynamic_shared(const void* kernel, size_t bytes);
void launch(const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem, std::function<void()> body);

// Numbers for a report.
struct Counters {
  uint64_t blocks, threads, barriers, collectives, switches;
};
Counters counters();

[[noreturn]] void fail(const char* tag, const std::string& message);

// ---- 16-bit floats (round to nearest even, as the CUDA conversions) --------------------------
uint16_t float_to_bf16_bits(float f);
float bf16_bits_to_float(uint16_t b);
uint16_t float_to_half_bits(float f);
float half_bits_to_float(uint16_t h);

struct bfloat16 {
  uint16_t x;
  bfloat16() = default;
  bfloat16(float f) : x(float_to_bf16_bits(f)) {}
  operator float() const { return bf16_bits_to_float(x); }
};
struct half {
  uint16_t x;
  half() = default;
  half(float f) : x(float_to_half_bits(f)) {}
  operator float() const { return half_bits_to_float(x); }
};

}  // namespace simt

// ---- Built-in variables and functions as kernels spell them ------------------------------------
using simt::dim3;
#define threadIdx (::simt::thread_idx())
#define blockIdx (::simt::block_idx())
#define blockDim (::simt::block_dim())
#define gridDim (::simt::grid_dim())

#define __syncthreads() ::simt::syncthreads(__FILE__, __LINE__)
#define __syncwarp ::simt::SyncwarpAt{__FILE__, __LINE__}  // __syncwarp() or __syncwarp(mask)
#define __shfl_sync(mask, v, src, ...) ::simt::shfl("__shfl_sync", __FILE__, __LINE__, mask, v, src, 0)
#define __shfl_xor_sync(mask, v, lm, ...) ::simt::shfl("__shfl_xor_sync", __FILE__, __LINE__, mask, v, lm, 1)
#define __shfl_down_sync(mask, v, d, ...) ::simt::shfl("__shfl_down_sync", __FILE__, __LINE__, mask, v, d, 2)
#define __shfl_up_sync(mask, v, d, ...) ::simt::shfl("__shfl_up_sync", __FILE__, __LINE__, mask, v, d, 3)

namespace simt {
void syncwarp_at(const char* file, int line, uint32_t mask = 0xffffffffu);
struct SyncwarpAt {
  const char* file;
  int line;
  void operator()(uint32_t mask = 0xffffffffu) const { syncwarp_at(file, line, mask); }
};

// The CPU twin of mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: a warp collective that
// gathers the 32 lanes' A, B and C fragments by the PTX ISA layouts (csrc/common/ptx.cuh),
// multiplies in float and scatters D.
void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16, const char* file,
                  int line);

template <typename T>
T shfl(const char* what, const char* file, int line, uint32_t mask, T value, int src_param, int mode) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move 4 or 8 bytes");
  struct Ctx {
    int mode;
  } ctx{mode};
  uint32_t in[3] = {0, 0, static_cast<uint32_t>(src_param)};
  std::memcpy(in, &value, sizeof(T));
  uint32_t out[2] = {0, 0};
  warp_collective(
      what, file, line, mask, in, 3, out, 2,
      [](const uint32_t (*lanes_in)[16], uint32_t (*lanes_out)[16], uint32_t m, const void* c) {
        const int md = static_cast<const Ctx*>(c)->mode;
        for (int lane = 0; lane < 32; ++lane) {
          if (!(m >> lane & 1u)) continue;
          const int p = static_cast<int>(lanes_in[lane][2]);
          int src = lane;
          if (md == 0) src = p & 31;
          if (md == 1) src = lane ^ p;
          if (md == 2) src = lane + p < 32 ? lane + p : lane;
          if (md == 3) src = lane - p >= 0 ? lane - p : lane;
          if (src < 0 || src > 31 || !(m >> src & 1u))
            fail("warp", "shuffle reads lane " + std::to_string(src) + ", which is not in the mask");
          lanes_out[lane][0] = lanes_in[src][0];
          lanes_out[lane][1] = lanes_in[src][1];
        }
      },
      &ctx);
  T result;
  std::memcpy(&result, out, sizeof(T));
  return result;
}
}  // namespace simt

// Math intrinsics: the accurate libm functions stand in for the fast ones.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
[[noreturn]] inline void __trap() { simt::fail("trap", "__trap() was executed"); }

// Device min/max accept mixed integer types, as CUDA's overloads do.
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return a < b ? a : b;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

// ---- The runtime API subset the tests use (same source runs under nvcc on a GPU) --------------
using cudaError_t = int;
using cudaStream_t = void*;
constexpr cudaError_t cudaSuccess = 0;
constexpr cudaError_t cudaErrorInvalidValue = 1;
enum cudaMemcpyKind { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize };
inline cudaError_t cudaMalloc(void** p, size_t bytes) {
  *p = std::malloc(bytes == 0 ? 1 : bytes);  // exactly `bytes`: ASan guards the rest
  return *p ? cudaSuccess : 2;
}
inline cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  std::memset(p, value, bytes);
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "simt error"; }
// Occupancy by threads and shared memory per SM alone (registers are not modelled).
template <typename Kernel>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, Kernel*, int threads, size_t smem) {
  const simt::Device& d = simt::current_device();
  int by_threads = d.max_threads_per_sm / (threads > 0 ? threads : 1);
  int by_smem = smem == 0 ? 32 : static_cast<int>(d.smem_per_sm / smem);
  *blocks = by_threads < by_smem ? by_threads : by_smem;
  if (*blocks > 32) *blocks = 32;
  return cudaSuccess;
}
template <typename Kernel>
inline cudaError_t cudaFuncSetAttribute(Kernel* kernel, cudaFuncAttribute, int bytes) {
  simt::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), static_cast<size_t>(bytes));
  return cudaSuccess;
}
