// CPU kernels of the alignment-loss ops: one pass over each row, float32 accumulation
// (float64 for float64 inputs), rows split across threads, column sums reduced per thread
// block and then added in a fixed order (deterministic for a given thread count).
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <bit>
#include <vector>

#include "alignment/alignment_checks.h"

namespace gfcore {
namespace alignment {
namespace {

// exp(x) for float without calls or branches, so that the loops around it vectorise
// (std::exp is a scalar libm call; the clamps need -fno-trapping-math to become selects).
// 2^x = 2^n * 2^f with n = round(x log2 e), |f| <= 1/2, 2^f from its degree-6 Taylor
// polynomial: relative error below 3e-7 on float's range. `lo` and `hi` are the clamp
// bounds -87 and 88, passed in from ExpBounds (see there).
inline float vexp(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const float t = x * 1.44269504088896341f;
  const float rounded = (t + 12582912.0f) - 12582912.0f;  // 1.5 * 2^23: round to nearest
  const int n = static_cast<int>(rounded);
  const float f = (t - rounded) * 0.69314718055994531f;  // f in nats
  float p = 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  return p * std::bit_cast<float>((n + 127) << 23);
}
// float64 serves gradcheck: exact.
inline double vexp(double x, double, double) { return std::exp(x); }

// vexp's clamp bounds as values the optimiser cannot see through. With literal bounds GCC
// folds vexp(bound) into constants and blends them into the result after the polynomial;
// on this project's Zen 5 machines that form ran the SiLU loop 5x slower than a plain
// max/min on the input. Build it once per kernel call, outside the vector loops.
template <typename acc_t>
struct ExpBounds {
  acc_t lo = acc_t(-87), hi = acc_t(88);
  ExpBounds() {
#if defined(__GNUC__) && defined(__x86_64__)
    asm("" : "+x"(lo), "+x"(hi));
#elif defined(__GNUC__) && defined(__aarch64__)
    asm("" : "+w"(lo), "+w"(hi));
#endif
  }
};

template <typename acc_t>
inline acc_t sigmoid(acc_t a, const ExpBounds<acc_t>& bounds) {
  return acc_t(1) / (acc_t(1) + vexp(-a, bounds.lo, bounds.hi));
}

// Runs body(row_begin, row_end, partial) over row blocks in parallel; each block owns a
// zeroed `partial` buffer of `width` accumulators. Returns the blocks' buffers summed.
template <typename acc_t, typename Body>
std::vector<acc_t> parallel_rows_with_partials(int64_t rows, int64_t width, const Body& body) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  const int64_t rows_per_block = (rows + blocks - 1) / blocks;
  std::vector<acc_t> partials(blocks * width, acc_t(0));
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t begin = b * rows_per_block;
      const int64_t end = std::min(rows, begin + rows_per_block);
      if (begin < end) body(begin, end, partials.data() + b * width);
    }
  });
  std::vector<acc_t> total(width, acc_t(0));
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t c = 0; c < width; ++c) total[c] += partials[b * width + c];
  return total;
}

template <typename acc_t>
at::Tensor vector_to_tensor(const std::vector<acc_t>& v) {
  auto t = at::empty({static_cast<int64_t>(v.size())}, at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
  std::copy(v.begin(), v.end(), t.template mutable_data_ptr<acc_t>());
  return t;
}

// ---- row kernels (templated on the storage type; acc_t is float or double) -------------

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void bias_silu_rows(const scalar_t* x, const scalar_t* bias, scalar_t* out, int64_t r0, int64_t r1, int64_t cols) {
  const ExpBounds<acc_t> bounds;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* xr = x + r * cols;
    scalar_t* orow = out + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t a = acc_t(xr[c]) + acc_t(bias[c]);
      orow[c] = scalar_t(a * sigmoid(a, bounds));
    }
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void bias_silu_backward_rows(const scalar_t* grad, const scalar_t* x, const scalar_t* bias, scalar_t* grad_x,
                             acc_t* colsum, int64_t r0, int64_t r1, int64_t cols) {
  const ExpBounds<acc_t> bounds;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* gr = grad + r * cols;
    const scalar_t* xr = x + r * cols;
    scalar_t* gxr = grad_x + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t a = acc_t(xr[c]) + acc_t(bias[c]);
      const acc_t s = sigmoid(a, bounds);
      const acc_t g = acc_t(gr[c]) * s * (acc_t(1) + a * (acc_t(1) - s));
      gxr[c] = scalar_t(g);
      colsum[c] += g;
    }
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void bias_normalize_cosine_rows(const scalar_t* x, const scalar_t* bias, const scalar_t* y, scalar_t* zhat,
                                acc_t* cos, acc_t* norms, acc_t eps, int64_t r0, int64_t r1, int64_t cols) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* xr = x + r * cols;
    const scalar_t* yr = y + r * cols;
    acc_t zz = 0, yy = 0, zy = 0;
#pragma omp simd reduction(+ : zz, yy, zy)
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t z = acc_t(xr[c]) + acc_t(bias[c]);
      const acc_t v = acc_t(yr[c]);
      zz += z * z;
      yy += v * v;
      zy += z * v;
    }
    const acc_t nz = std::sqrt(zz), ny = std::sqrt(yy);
    const acc_t rz = acc_t(1) / std::max(nz, eps);
    const acc_t ry = acc_t(1) / std::max(ny, eps);
    scalar_t* zr = zhat + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) zr[c] = scalar_t((acc_t(xr[c]) + acc_t(bias[c])) * rz);
    cos[r] = zy * rz * ry;
    norms[2 * r] = nz;
    norms[2 * r + 1] = ny;
  }
}

template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void bias_normalize_cosine_backward_rows(const scalar_t* grad_zhat, const acc_t* grad_cos, const scalar_t* zhat,
                                         const scalar_t* y, const acc_t* cos, const acc_t* norms, acc_t eps,
                                         scalar_t* grad_x, acc_t* colsum, int64_t r0, int64_t r1, int64_t cols) {
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* gr = grad_zhat + r * cols;
    const scalar_t* zr = zhat + r * cols;
    const scalar_t* yr = y + r * cols;
    acc_t zg = 0;
#pragma omp simd reduction(+ : zg)
    for (int64_t c = 0; c < cols; ++c) zg += acc_t(zr[c]) * acc_t(gr[c]);
    // A clamped norm is a constant, so the projection terms vanish (see the reference).
    const acc_t live = norms[2 * r] > eps ? acc_t(1) : acc_t(0);
    const acc_t rz = acc_t(1) / std::max(norms[2 * r], eps);
    const acc_t ry = acc_t(1) / std::max(norms[2 * r + 1], eps);
    const acc_t zcoef = live * (zg + grad_cos[r] * cos[r]);  // multiplies zhat
    const acc_t ycoef = grad_cos[r] * ry;                     // multiplies y
    scalar_t* gxr = grad_x + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t g = rz * (acc_t(gr[c]) - zcoef * acc_t(zr[c]) + ycoef * acc_t(yr[c]));
      gxr[c] = scalar_t(g);
      colsum[c] += g;
    }
  }
}

// colsum has cols + 1 entries: the last one receives the sum of squares.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
void bias_mse_rows(const scalar_t* x, const scalar_t* bias, const scalar_t* y, scalar_t* diff, acc_t* colsum,
                   int64_t r0, int64_t r1, int64_t cols) {
  acc_t squares = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const scalar_t* xr = x + r * cols;
    const scalar_t* yr = y + r * cols;
    scalar_t* dr = diff + r * cols;
#pragma omp simd reduction(+ : squares)
    for (int64_t c = 0; c < cols; ++c) {
      const acc_t d = acc_t(xr[c]) + acc_t(bias[c]) - acc_t(yr[c]);
      dr[c] = scalar_t(d);
      colsum[c] += d;
      squares += d * d;
    }
  }
  colsum[cols] += squares;
}

// ---- float32 entry points compiled three times: AVX-512, AVX2+FMA and baseline, chosen at
// load time (flatten inlines the row kernel into each clone so that it is vectorised for
// that target; on Zen 5 the AVX-512 clone of the SiLU loops is about 1.8x the AVX2 one) ----
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define GFCORE_VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default"), flatten))
#else
#define GFCORE_VECTOR_CLONES
#endif

GFCORE_VECTOR_CLONES void bias_silu_rows(const float* x, const float* bias, float* out, int64_t r0, int64_t r1,
                                         int64_t cols) {
  bias_silu_rows<float, float>(x, bias, out, r0, r1, cols);
}

GFCORE_VECTOR_CLONES void bias_silu_backward_rows(const float* grad, const float* x, const float* bias,
                                                  float* grad_x, float* colsum, int64_t r0, int64_t r1,
                                                  int64_t cols) {
  bias_silu_backward_rows<float, float>(grad, x, bias, grad_x, colsum, r0, r1, cols);
}

// bfloat16 SiLU rows: the storage converted by bit arithmetic that vectorises. c10's float ->
// bfloat16 conversion (the same rounding: to nearest even, NaN -> 0x7FC0) branches on NaN and
// kept these loops scalar: 12x slower than ATen's SiLU under CPU autocast (bench_dropin).
inline float bf16_bits_to_float(uint16_t bits) { return std::bit_cast<float>(uint32_t(bits) << 16); }

inline uint16_t float_to_bf16_bits(float value) {
  const uint32_t u = std::bit_cast<uint32_t>(value);
  const uint16_t rounded = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  return value != value ? uint16_t(0x7FC0) : rounded;
}

inline const uint16_t* bits(const c10::BFloat16* p) { return reinterpret_cast<const uint16_t*>(p); }
inline uint16_t* bits(c10::BFloat16* p) { return reinterpret_cast<uint16_t*>(p); }

GFCORE_VECTOR_CLONES void bias_silu_rows(const c10::BFloat16* x, const c10::BFloat16* bias, c10::BFloat16* out,
                                         int64_t r0, int64_t r1, int64_t cols) {
  const ExpBounds<float> bounds;
  const uint16_t* b = bits(bias);
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* xr = bits(x) + r * cols;
    uint16_t* orow = bits(out) + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const float a = bf16_bits_to_float(xr[c]) + bf16_bits_to_float(b[c]);
      orow[c] = float_to_bf16_bits(a * sigmoid(a, bounds));
    }
  }
}

GFCORE_VECTOR_CLONES void bias_silu_backward_rows(const c10::BFloat16* grad, const c10::BFloat16* x,
                                                  const c10::BFloat16* bias, c10::BFloat16* grad_x, float* colsum,
                                                  int64_t r0, int64_t r1, int64_t cols) {
  const ExpBounds<float> bounds;
  const uint16_t* b = bits(bias);
  for (int64_t r = r0; r < r1; ++r) {
    const uint16_t* gr = bits(grad) + r * cols;
    const uint16_t* xr = bits(x) + r * cols;
    uint16_t* gxr = bits(grad_x) + r * cols;
#pragma omp simd
    for (int64_t c = 0; c < cols; ++c) {
      const float a = bf16_bits_to_float(xr[c]) + bf16_bits_to_float(b[c]);
      const float s = sigmoid(a, bounds);
      const float g = bf16_bits_to_float(gr[c]) * s * (1.0f + a * (1.0f - s));
      gxr[c] = float_to_bf16_bits(g);
      colsum[c] += g;
    }
  }
}

GFCORE_VECTOR_CLONES void bias_normalize_cosine_rows(const float* x, const float* bias, const float* y, float* zhat,
                                                     float* cos, float* norms, float eps, int64_t r0, int64_t r1,
                                                     int64_t cols) {
  bias_normalize_cosine_rows<float, float>(x, bias, y, zhat, cos, norms, eps, r0, r1, cols);
}

GFCORE_VECTOR_CLONES void bias_normalize_cosine_backward_rows(const float* grad_zhat, const float* grad_cos,
                                                              const float* zhat, const float* y, const float* cos,
                                                              const float* norms, float eps, float* grad_x,
                                                              float* colsum, int64_t r0, int64_t r1, int64_t cols) {
  bias_normalize_cosine_backward_rows<float, float>(grad_zhat, grad_cos, zhat, y, cos, norms, eps, grad_x, colsum, r0,
                                                    r1, cols);
}

GFCORE_VECTOR_CLONES void bias_mse_rows(const float* x, const float* bias, const float* y, float* diff, float* colsum,
                                        int64_t r0, int64_t r1, int64_t cols) {
  bias_mse_rows<float, float>(x, bias, y, diff, colsum, r0, r1, cols);
}

// ---- op entry points --------------------------------------------------------------------

int64_t grain_rows(int64_t cols) { return 1 + 16384 / std::max<int64_t>(cols, 1); }

at::Tensor bias_silu_cpu(const at::Tensor& x, const at::Tensor& bias) {
  check_bias_silu_args(x, bias);
  auto out = at::empty_like(x);
  const int64_t rows = x.size(0), cols = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_silu_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, rows, grain_rows(cols),
                     [&](int64_t r0, int64_t r1) { bias_silu_rows(xp, bp, op, r0, r1, cols); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> bias_silu_backward_cpu(const at::Tensor& grad_out, const at::Tensor& x,
                                                           const at::Tensor& bias) {
  check_bias_silu_backward_args(grad_out, x, bias);
  auto grad_x = at::empty_like(x);
  at::Tensor grad_bias;
  const int64_t rows = x.size(0), cols = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_silu_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    grad_bias = vector_to_tensor(parallel_rows_with_partials<acc_t>(
        rows, cols, [&](int64_t r0, int64_t r1, acc_t* partial) {
          bias_silu_backward_rows(gp, xp, bp, gxp, partial, r0, r1, cols);
        }));
  });
  return {grad_x, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_normalize_cosine_cpu(const at::Tensor& x, const at::Tensor& bias,
                                                                         const at::Tensor& y, double eps) {
  check_bias_target_args(x, bias, y);
  const auto stat = stat_type(x.scalar_type());
  auto zhat = at::empty_like(x);
  auto cos = at::empty({x.size(0)}, x.options().dtype(stat));
  auto norms = at::empty({x.size(0), 2}, x.options().dtype(stat));
  const int64_t rows = x.size(0), cols = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_normalize_cosine_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* zp = zhat.mutable_data_ptr<scalar_t>();
    acc_t* cp = cos.mutable_data_ptr<acc_t>();
    acc_t* np = norms.mutable_data_ptr<acc_t>();
    at::parallel_for(0, rows, grain_rows(cols), [&](int64_t r0, int64_t r1) {
      bias_normalize_cosine_rows(xp, bp, yp, zp, cp, np, acc_t(eps), r0, r1, cols);
    });
  });
  return {zhat, cos, norms};
}

std::tuple<at::Tensor, at::Tensor> bias_normalize_cosine_backward_cpu(const at::Tensor& grad_zhat,
                                                                      const at::Tensor& grad_cos,
                                                                      const at::Tensor& zhat, const at::Tensor& y,
                                                                      const at::Tensor& cos, const at::Tensor& norms,
                                                                      double eps) {
  check_normalize_cosine_backward_args(grad_zhat, grad_cos, zhat, y, cos, norms);
  auto grad_x = at::empty_like(zhat);
  at::Tensor grad_bias;
  const int64_t rows = zhat.size(0), cols = zhat.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, zhat.scalar_type(), "bias_normalize_cosine_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gp = grad_zhat.const_data_ptr<scalar_t>();
    const scalar_t* zp = zhat.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const acc_t* gcp = grad_cos.const_data_ptr<acc_t>();
    const acc_t* cp = cos.const_data_ptr<acc_t>();
    const acc_t* np = norms.const_data_ptr<acc_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    grad_bias = vector_to_tensor(parallel_rows_with_partials<acc_t>(
        rows, cols, [&](int64_t r0, int64_t r1, acc_t* partial) {
          bias_normalize_cosine_backward_rows(gp, gcp, zp, yp, cp, np, acc_t(eps), gxp, partial, r0, r1, cols);
        }));
  });
  return {grad_x, grad_bias};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bias_mse_cpu(const at::Tensor& x, const at::Tensor& bias,
                                                            const at::Tensor& y) {
  check_bias_mse_args(x, bias, y);
  auto diff = at::empty_like(x);
  at::Tensor loss, diff_colsum;
  const int64_t rows = x.size(0), cols = x.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "bias_mse_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* bp = bias.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    scalar_t* dp = diff.mutable_data_ptr<scalar_t>();
    auto sums = parallel_rows_with_partials<acc_t>(rows, cols + 1, [&](int64_t r0, int64_t r1, acc_t* partial) {
      bias_mse_rows(xp, bp, yp, dp, partial, r0, r1, cols);
    });
    loss = at::scalar_tensor(sums[cols] / acc_t(x.numel()), x.options().dtype(stat_type(x.scalar_type())));
    sums.pop_back();
    diff_colsum = vector_to_tensor(sums);
  });
  return {loss, diff, diff_colsum};
}

}  // namespace

TORCH_LIBRARY_IMPL(gfcore, CPU, m) {
  m.impl("bias_silu", &bias_silu_cpu);
  m.impl("bias_silu_backward", &bias_silu_backward_cpu);
  m.impl("bias_normalize_cosine", &bias_normalize_cosine_cpu);
  m.impl("bias_normalize_cosine_backward", &bias_normalize_cosine_backward_cpu);
  m.impl("bias_mse", &bias_mse_cpu);
}

}  // namespace alignment
}  // namespace gfcore
