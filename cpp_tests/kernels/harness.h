// The kernel test harness: cases, schedules, data and comparisons.
//
// A case is a function that builds inputs, runs the real launch functions of csrc/ (through
// the simt runtime on the CPU, or on a GPU when this file is compiled by nvcc), and compares
// every output with a float64 reference computed here from the same (rounded) inputs. main.cpp
// runs each case under every schedule in its own forked process, so a sanitizer report, a
// barrier error or an abort fails that run alone and is reported with its tag.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/cuda_compat.cuh"

namespace harness {

// ---- Registry -------------------------------------------------------------------------------
struct Case {
  std::string name;
  std::string family;  // "alignment" or "attention"
  std::function<void()> run;
  int arch = 90;  // the device the harness emulates: 90 (H100), 80 (A100) or 70 (V100)
};
std::vector<Case>& registry();

// ---- Failure ------------------------------------------------------------------------------
// Under the simt runtime each run is its own process: print the tagged line and exit. On a GPU
// (nvcc build) the cases run in one process: throw, and main reports the case as failed.
[[noreturn]] inline void fail_value(const std::string& what) {
  std::fprintf(stderr, "harness[value]: %s\n", what.c_str());
  std::fflush(stderr);
#if defined(GFCORE_SIMT)
  std::exit(3);
#else
  throw std::runtime_error(what);
#endif
}

// ---- dtypes -------------------------------------------------------------------------------
template <typename T>
struct DType;
template <>
struct DType<float> {
  static constexpr const char* name = "fp32";
  static constexpr double unit_roundoff = 0x1p-24;  // relative rounding error of normal values
  static constexpr double subnormal_roundoff = 0x1p-150;  // absolute rounding error near zero
};
template <>
struct DType<gfcore::bf16> {
  static constexpr const char* name = "bf16";
  static constexpr double unit_roundoff = 0x1p-8;
  static constexpr double subnormal_roundoff = 0x1p-134;
};
template <>
struct DType<gfcore::fp16> {
  static constexpr const char* name = "fp16";
  static constexpr double unit_roundoff = 0x1p-11;
  static constexpr double subnormal_roundoff = 0x1p-25;  // below 2^-14 the spacing is 2^-24
};

// ---- The device the launch decisions are made for: the emulated one under simt, the real one
// on a GPU (nvcc build).
inline gfcore::DeviceLimits device_limits() {
#if defined(GFCORE_SIMT)
  const simt::Device& d = simt::current_device();
  return {d.sm_count, d.major, d.smem_per_block_optin};
#else
  int dev = 0;
  cudaDeviceProp p;
  cudaGetDevice(&dev);
  cudaGetDeviceProperties(&p, dev);
  return {p.multiProcessorCount, p.major, p.sharedMemPerBlockOptin};
#endif
}

// ---- Device buffers (cudaMalloc of exactly the asked size: ASan guards both ends) -----------
template <typename T>
struct DeviceBuffer {
  T* ptr = nullptr;
  size_t count = 0;
  explicit DeviceBuffer(size_t n, int fill_byte = 0xFF) : count(n) {
    void* p = nullptr;
    if (cudaMalloc(&p, sizeof(T) * (n == 0 ? 1 : n)) != cudaSuccess) fail_value("cudaMalloc failed");
    ptr = static_cast<T*>(p);
    cudaMemset(ptr, fill_byte, sizeof(T) * (n == 0 ? 1 : n));  // NaN bytes: an unwritten output shows
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  ~DeviceBuffer() { cudaFree(ptr); }
  void upload(const std::vector<T>& host) { cudaMemcpy(ptr, host.data(), sizeof(T) * host.size(), cudaMemcpyHostToDevice); }
  std::vector<T> download() const {
    std::vector<T> host(count);
    cudaMemcpy(host.data(), ptr, sizeof(T) * count, cudaMemcpyDeviceToHost);
    return host;
  }
};

inline void check_launch(cudaError_t err, const char* what) {
  if (err != cudaSuccess) fail_value(std::string(what) + ": launch failed: " + cudaGetErrorString(err));
  if (cudaDeviceSynchronize() != cudaSuccess) fail_value(std::string(what) + ": kernel failed");
}

// ---- Data ---------------------------------------------------------------------------------
// Normal values rounded to T; `ref` gets the rounded values in float64.
template <typename T>
std::vector<T> random_values(size_t n, uint64_t seed, double scale, std::vector<double>* ref) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, scale);
  std::vector<T> out(n);
  if (ref) ref->resize(n);
  for (size_t i = 0; i < n; ++i) {
    out[i] = T(static_cast<float>(normal(rng)));
    if (ref) (*ref)[i] = static_cast<double>(static_cast<float>(out[i]));
  }
  return out;
}

// ---- Comparison -----------------------------------------------------------------------------
// Every element: |got_i - ref_i| <= tol_i. NaN never passes. Each case derives tol from the
// dtype's unit roundoff and the magnitudes that enter the element (see the cases).
template <typename T>
void expect_close(const std::string& what, const std::vector<T>& got, const std::vector<double>& ref,
                  const std::vector<double>& tol) {
  if (got.size() < ref.size() || tol.size() != ref.size()) fail_value(what + ": sizes differ");
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = static_cast<double>(static_cast<float>(got[i]));
    const double err = std::fabs(g - ref[i]);
    if (!(err <= tol[i])) {
      char buf[256];
      std::snprintf(buf, sizeof buf, ": element %zu is %.9g, reference %.9g (error %.3g > tolerance %.3g)", i, g,
                    ref[i], err, tol[i]);
      fail_value(what + buf);
    }
  }
}

// tol_i = rel * |ref_i| + abs_tol.
template <typename T>
void expect_close(const std::string& what, const std::vector<T>& got, const std::vector<double>& ref, double rel,
                  double abs_tol) {
  std::vector<double> tol(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) tol[i] = rel * std::fabs(ref[i]) + abs_tol;
  expect_close(what, got, ref, tol);
}

// gamma_n = n u / (1 - n u) with u = 2^-24: the bound on the relative error of an fp32 sum or
// dot product of n terms (relative to the sum of the terms' magnitudes).
inline double gamma32(double n) {
  const double nu = n * 0x1p-24;
  return nu / (1.0 - nu);
}

inline double max_abs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::fmax(m, std::fabs(x));
  return m;
}

}  // namespace harness

