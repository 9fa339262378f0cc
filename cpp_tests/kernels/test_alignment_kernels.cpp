// Harness cases of the alignment-loss kernels (csrc/alignment): every kernel, fp32/bf16/fp16,
// the shapes of python_tests/test_alignment_cuda.py (rows cut down where only the width
// matters), the one-value-at-a-time fallback for odd widths and misaligned pointers. Launched
// through the same plan/launch functions as the torch extension (alignment_launch.cuh).
#include "alignment/alignment_launch.cuh"
#include "alignment/sum_partials.cuh"
#include "harness.h"

namespace {

using namespace gfcore;
using namespace gfcore::alignment;
using harness::DeviceBuffer;
using harness::DType;
using harness::expect_close;
using harness::gamma32;
using harness::random_values;

struct Shape {
  int64_t rows, cols;
  int offset;  // elements: 1 makes every tensor pointer misaligned for 16-byte packs
};

std::string label(const char* op, const Shape& s, const char* dtype) {
  return std::string(op) + "/" + dtype + "/" + std::to_string(s.rows) + "x" + std::to_string(s.cols) +
         (s.offset ? "/misaligned" : "");
}

// A [rows, cols] operand at `offset` elements into its allocation.
template <typename T>
struct Operand {
  DeviceBuffer<T> buf;
  int offset;
  Operand(size_t n, int off) : buf(n + off), offset(off) {}
  T* ptr() { return buf.ptr + offset; }
  void upload(const std::vector<T>& v) {
    std::vector<T> padded(offset, T(0.f));
    padded.insert(padded.end(), v.begin(), v.end());
    buf.upload(padded);
  }
  std::vector<T> download() {
    auto all = buf.download();
    return std::vector<T>(all.begin() + offset, all.end());
  }
};

std::vector<float> column_sums(const float* partial, int64_t groups, int64_t cols) {
  DeviceBuffer<float> out(cols);
  harness::check_launch(launch_sum_partials(partial, out.ptr, groups, cols, nullptr), "sum_partials");
  return out.download();
}

double silu(double a) { return a / (1.0 + std::exp(-a)); }
double silu_grad(double a) {
  const double s = 1.0 / (1.0 + std::exp(-a));
  return s * (1.0 + a * (1.0 - s));
}

template <typename T>
void bias_silu_case(const Shape& s) {
  const double u = DType<T>::unit_roundoff;
  const size_t n = s.rows * s.cols;
  std::vector<double> x, b, g;
  Operand<T> X(n, s.offset), B(s.cols, s.offset), Out(n, s.offset), G(n, s.offset), GX(n, s.offset);
  X.upload(random_values<T>(n, 1, 2.0, &x));
  B.upload(random_values<T>(s.cols, 2, 1.0, &b));
  G.upload(random_values<T>(n, 3, 1.0, &g));
  const DeviceLimits dev = harness::device_limits();
  harness::check_launch(launch_bias_silu(X.ptr(), B.ptr(), Out.ptr(), s.rows, s.cols, dev, nullptr), "bias_silu");

  // Forward: fp32 math (a few ulps) then one rounding to T.
  // Tolerances: one rounding to T, a few fp32 ulps of exp and division, and the fp32 rounding
  // of a = x + b (|silu'| <= 1.1 and |silu''| <= 0.5 carry it over).
  std::vector<double> out_ref(n), out_tol(n), gx_ref(n), gx_tol(n), colsum_ref(s.cols, 0.0), colsum_mag(s.cols, 0.0),
      colsum_elem_err(s.cols, 0.0);
  const double sub = DType<T>::subnormal_roundoff, u32 = 0x1p-24;
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.cols; ++c) {
      const size_t i = r * s.cols + c;
      const double a = x[i] + b[c], a_err = u32 * (std::fabs(x[i]) + std::fabs(b[c]));
      out_ref[i] = silu(a);
      out_tol[i] = (u + 16 * u32) * std::fabs(out_ref[i]) + 1.1 * a_err + sub;
      const double gx = g[i] * silu_grad(a);
      gx_ref[i] = gx;
      gx_tol[i] = (u + 16 * u32) * std::fabs(gx) + std::fabs(g[i]) * (16 * u32 + 0.5 * a_err) + sub;
      colsum_ref[c] += gx;
      colsum_mag[c] += std::fabs(gx);
      colsum_elem_err[c] += std::fabs(g[i]) * (16 * u32 + 0.5 * a_err);
    }
  expect_close(label("bias_silu", s, DType<T>::name), Out.download(), out_ref, out_tol);

  // Backward: grad_x elementwise; bias gradient = fp32 column sums over the rows.
  const auto plan = plan_bias_silu_backward<T>(G.ptr(), X.ptr(), B.ptr(), GX.ptr(), s.rows, s.cols, dev);
  if (s.offset && plan.vec != 1) harness::fail_value("misaligned pointers must take the one-value path");
  DeviceBuffer<float> partial(plan.groups * s.cols);
  harness::check_launch(launch_bias_silu_backward(plan, G.ptr(), X.ptr(), B.ptr(), GX.ptr(), partial.ptr, s.rows,
                                                  s.cols, nullptr),
                        "bias_silu_backward");
  expect_close(label("bias_silu_backward grad_x", s, DType<T>::name), GX.download(), gx_ref, gx_tol);
  std::vector<double> tol(s.cols);
  for (int64_t c = 0; c < s.cols; ++c) tol[c] = gamma32(s.rows + 32) * colsum_mag[c] + colsum_elem_err[c] + 1e-30;
  expect_close(label("bias_silu_backward grad_bias", s, DType<T>::name),
               column_sums(partial.ptr, plan.groups, s.cols), colsum_ref, tol);
}

template <typename T>
void bias_mse_case(const Shape& s) {
  const double u = DType<T>::unit_roundoff;
  const size_t n = s.rows * s.cols;
  std::vector<double> x, b, y;
  Operand<T> X(n, s.offset), B(s.cols, s.offset), Y(n, s.offset), Diff(n, s.offset);
  X.upload(random_values<T>(n, 4, 1.0, &x));
  B.upload(random_values<T>(s.cols, 5, 0.5, &b));
  Y.upload(random_values<T>(n, 6, 2.0, &y));
  const auto plan = plan_bias_mse<T>(X.ptr(), B.ptr(), Y.ptr(), Diff.ptr(), s.rows, s.cols, harness::device_limits());
  if (s.offset && plan.vec != 1) harness::fail_value("misaligned pointers must take the one-value path");
  DeviceBuffer<float> colsum_partial(plan.groups * s.cols), squares_partial(plan.groups * plan.col_blocks);
  harness::check_launch(launch_bias_mse(plan, X.ptr(), B.ptr(), Y.ptr(), Diff.ptr(), colsum_partial.ptr,
                                        squares_partial.ptr, s.rows, s.cols, nullptr),
                        "bias_mse");
  // diff: two fp32 additions (errors relative to the terms: they may cancel), one rounding to T.
  std::vector<double> diff_ref(n), diff_tol(n), colsum_ref(s.cols, 0.0), colsum_mag(s.cols, 0.0);
  double squares = 0.0;
  for (int64_t r = 0; r < s.rows; ++r)
    for (int64_t c = 0; c < s.cols; ++c) {
      const size_t i = r * s.cols + c;
      const double d = x[i] + b[c] - y[i];
      const double terms = std::fabs(x[i]) + std::fabs(b[c]) + std::fabs(y[i]);
      diff_ref[i] = d;
      diff_tol[i] = u * std::fabs(d) + 2 * 0x1p-24 * terms + DType<T>::subnormal_roundoff;
      colsum_ref[c] += d;
      colsum_mag[c] += terms;
      squares += d * d;
    }
  expect_close(label("bias_mse diff", s, DType<T>::name), Diff.download(), diff_ref, diff_tol);
  std::vector<double> tol(s.cols);
  for (int64_t c = 0; c < s.cols; ++c) tol[c] = gamma32(s.rows + 8) * colsum_mag[c] + 1e-30;
  expect_close(label("bias_mse diff_colsum", s, DType<T>::name),
               column_sums(colsum_partial.ptr, plan.groups, s.cols), colsum_ref, tol);
  // The loss is the sum of the per-block squares (the torch launcher divides by numel).
  const auto blocks = squares_partial.download();
  std::vector<float> total{0.f};
  for (float v : blocks) total[0] += v;
  expect_close(label("bias_mse squares", s, DType<T>::name), total, {squares}, gamma32(double(n) + 64), 1e-30);
}

template <typename T>
void normalize_cosine_case(const Shape& s) {
  const double u = DType<T>::unit_roundoff;
  const size_t n = s.rows * s.cols;
  // eps large enough that the clamped rows' gradients (about 1 / eps) stay within fp16.
  const float eps = 1e-3f;
  std::vector<double> x, b, y;
  Operand<T> X(n, s.offset), B(s.cols, s.offset), Y(n, s.offset), Zhat(n, s.offset);
  X.upload(random_values<T>(n, 7, 1.0, &x));
  B.upload(random_values<T>(s.cols, 8, 0.3, &b));
  Y.upload(random_values<T>(n, 9, 2.0, &y));
  DeviceBuffer<float> cos(s.rows), norms(2 * s.rows);
  const DeviceLimits dev = harness::device_limits();
  // A row lives in the registers of at most 8 warps: 4 packs of 16 bytes (or 16 single values)
  // per thread. Wider rows must be refused by the launch logic, not run.
  const int vec = pack_width<T>(s.cols, {X.ptr(), B.ptr(), Y.ptr(), Zhat.ptr()});
  if (s.cols > normalize_cosine_max_cols(vec)) {
    try {
      launch_bias_normalize_cosine(X.ptr(), B.ptr(), Y.ptr(), Zhat.ptr(), cos.ptr, norms.ptr, s.rows, s.cols, eps,
                                   dev, nullptr);
    } catch (const std::invalid_argument&) {
      return;
    }
    harness::fail_value(label("bias_normalize_cosine", s, DType<T>::name) + ": a row too wide was not refused");
  }
  harness::check_launch(launch_bias_normalize_cosine(X.ptr(), B.ptr(), Y.ptr(), Zhat.ptr(), cos.ptr, norms.ptr,
                                                     s.rows, s.cols, eps, dev, nullptr),
                        "bias_normalize_cosine");
  std::vector<double> zhat_ref(n), cos_ref(s.rows), norms_ref(2 * s.rows), zhat_tol(n), cos_tol(s.rows),
      norms_tol(2 * s.rows);
  const double g = gamma32(s.cols + 8);
  for (int64_t r = 0; r < s.rows; ++r) {
    double zz = 0, yy = 0, zy = 0, zy_mag = 0;
    for (int64_t c = 0; c < s.cols; ++c) {
      const double z = x[r * s.cols + c] + b[c], v = y[r * s.cols + c];
      zz += z * z;
      yy += v * v;
      zy += z * v;
      zy_mag += std::fabs(z * v);
    }
    const double nz = std::sqrt(zz), ny = std::sqrt(yy);
    const double rz = 1.0 / std::fmax(nz, eps), ry = 1.0 / std::fmax(ny, eps);
    for (int64_t c = 0; c < s.cols; ++c) {
      const size_t i = r * s.cols + c;
      const double zh = (x[i] + b[c]) * rz;
      zhat_ref[i] = zh;
      // The fp32 z = x + b may cancel: its rounding is relative to |x| + |b|.
      zhat_tol[i] = (u + g) * std::fabs(zh) + 2 * 0x1p-24 * (std::fabs(x[i]) + std::fabs(b[c])) * rz +
                    DType<T>::subnormal_roundoff;
    }
    cos_ref[r] = zy * rz * ry;
    cos_tol[r] = g * (zy_mag * rz * ry + std::fabs(cos_ref[r])) + 1e-30;
    norms_ref[2 * r] = nz;
    norms_ref[2 * r + 1] = ny;
    norms_tol[2 * r] = g * nz + 1e-30;
    norms_tol[2 * r + 1] = g * ny + 1e-30;
  }
  const char* dt = DType<T>::name;
  const RowLayout layout = row_layout(s.cols, vec);
  // Rows spread over several row slots: two blocks walking all rows (the row loop, and the
  // alternating reduction buffers) must give the same bits as the launch's own grid.
  const bool looped = s.rows > 2 * layout.slots();
  if (looped) {
    Operand<T> Zhat2(n, s.offset);
    DeviceBuffer<float> cos2(s.rows), norms2(2 * s.rows);
    harness::check_launch(launch_bias_normalize_cosine(X.ptr(), B.ptr(), Y.ptr(), Zhat2.ptr(), cos2.ptr, norms2.ptr,
                                                       s.rows, s.cols, eps, dev, nullptr, /*max_blocks=*/2),
                          "bias_normalize_cosine (2 blocks)");
    const auto a = Zhat.download(), b2 = Zhat2.download();
    const auto ca = cos.download(), cb = cos2.download();
    for (size_t i = 0; i < n; ++i)
      if (std::memcmp(&a[i], &b2[i], sizeof(T)) != 0)
        harness::fail_value(label("bias_normalize_cosine", s, dt) + ": zhat differs on a 2-block grid");
    for (int64_t r = 0; r < s.rows; ++r)
      if (std::memcmp(&ca[r], &cb[r], sizeof(float)) != 0)
        harness::fail_value(label("bias_normalize_cosine", s, dt) + ": cos differs on a 2-block grid");
  }
  expect_close(label("bias_normalize_cosine zhat", s, dt), Zhat.download(), zhat_ref, zhat_tol);
  expect_close(label("bias_normalize_cosine cos", s, dt), cos.download(), cos_ref, cos_tol);
  expect_close(label("bias_normalize_cosine norms", s, dt), norms.download(), norms_ref, norms_tol);

  // Backward from the forward's zhat and statistics, with random upstream gradients; one row
  // in three gets |z| below eps (the clamped branch).
  std::vector<double> gz, gc_d;
  Operand<T> GZ(n, s.offset), GX(n, s.offset);
  GZ.upload(random_values<T>(n, 10, 1.0, &gz));
  auto gc = random_values<float>(s.rows, 11, 1.0, &gc_d);
  DeviceBuffer<float> grad_cos(s.rows);
  grad_cos.upload(gc);
  auto zhat_t = Zhat.download();
  auto norms_f = norms.download();
  auto cos_f = cos.download();
  for (int64_t r = 2; r < s.rows; r += 3) norms_f[2 * r] = eps * 0.5f;
  norms.upload(norms_f);
  const auto plan =
      plan_bias_normalize_cosine_backward<T>(GZ.ptr(), Zhat.ptr(), Y.ptr(), GX.ptr(), s.rows, s.cols, dev);
  if (s.offset && plan.layout.vec != 1) harness::fail_value("misaligned pointers must take the one-value path");
  DeviceBuffer<float> partial(plan.blocks * s.cols);
  harness::check_launch(launch_bias_normalize_cosine_backward(plan, GZ.ptr(), grad_cos.ptr, Zhat.ptr(), Y.ptr(),
                                                              cos.ptr, norms.ptr, GX.ptr(), partial.ptr, s.rows,
                                                              s.cols, eps, nullptr),
                        "bias_normalize_cosine_backward");
  std::vector<double> gx_ref(n), gx_tol(n), colsum_ref(s.cols, 0.0), colsum_mag(s.cols, 0.0),
      colsum_elem_err(s.cols, 0.0);
  for (int64_t r = 0; r < s.rows; ++r) {
    double zg = 0, zg_mag = 0;
    for (int64_t c = 0; c < s.cols; ++c) {
      const double zh = static_cast<float>(zhat_t[r * s.cols + c]);
      zg += zh * gz[r * s.cols + c];
      zg_mag += std::fabs(zh * gz[r * s.cols + c]);
    }
    const double nz = norms_f[2 * r], live = nz > eps ? 1.0 : 0.0;
    const double rz = 1.0 / std::fmax(nz, double(eps)), ry = 1.0 / std::fmax(double(norms_f[2 * r + 1]), double(eps));
    const double zcoef = live * (zg + gc_d[r] * cos_f[r]), ycoef = gc_d[r] * ry;
    const double zcoef_mag = live * (zg_mag + std::fabs(gc_d[r] * cos_f[r]));
    for (int64_t c = 0; c < s.cols; ++c) {
      const size_t i = r * s.cols + c;
      const double zh = static_cast<float>(zhat_t[i]);
      const double v = rz * (gz[i] - zcoef * zh + ycoef * y[i]);
      const double mag = rz * (std::fabs(gz[i]) + zcoef_mag * std::fabs(zh) + std::fabs(ycoef * y[i]));
      gx_ref[i] = v;
      gx_tol[i] = u * std::fabs(v) + g * mag + DType<T>::subnormal_roundoff;
      colsum_ref[c] += v;
      colsum_mag[c] += mag;
    }
  }
  expect_close(label("bias_normalize_cosine_backward grad_x", s, dt), GX.download(), gx_ref, gx_tol);
  std::vector<double> tol(s.cols);
  for (int64_t c = 0; c < s.cols; ++c) tol[c] = gamma32(s.rows + s.cols + 16) * colsum_mag[c] + 1e-30;
  expect_close(label("bias_normalize_cosine_backward grad_bias", s, dt),
               column_sums(partial.ptr, plan.blocks, s.cols), colsum_ref, tol);
  if (looped) {  // two blocks walking all rows: grad_x bit for bit, the column sums within tolerance
    auto plan2 = plan;
    plan2.blocks = 2;
    Operand<T> GX2(n, s.offset);
    DeviceBuffer<float> partial2(plan2.blocks * s.cols);
    harness::check_launch(launch_bias_normalize_cosine_backward(plan2, GZ.ptr(), grad_cos.ptr, Zhat.ptr(), Y.ptr(),
                                                                cos.ptr, norms.ptr, GX2.ptr(), partial2.ptr, s.rows,
                                                                s.cols, eps, nullptr),
                          "bias_normalize_cosine_backward (2 blocks)");
    const auto a = GX.download(), b2 = GX2.download();
    for (size_t i = 0; i < n; ++i)
      if (std::memcmp(&a[i], &b2[i], sizeof(T)) != 0)
        harness::fail_value(label("bias_normalize_cosine_backward", s, dt) + ": grad_x differs on a 2-block grid");
    expect_close(label("bias_normalize_cosine_backward grad_bias (2 blocks)", s, dt),
                 column_sums(partial2.ptr, plan2.blocks, s.cols), colsum_ref, tol);
  }
}

const Shape kShapes[] = {{1, 1, 0},   {37, 19, 0}, {300, 40, 0},  {67, 512, 0}, {9, 2048, 0},
                         {5, 4096, 0}, {33, 1152, 0}, {20, 64, 1},  {7, 4096, 1}, {2, 8200, 0}};

template <typename T>
void register_dtype() {
  for (const Shape& s : kShapes) {
    const char* dt = DType<T>::name;
    // Rows up to 4096 values run in every dtype and alignment (8 warps per row at most); 8200
    // is refused by the normalize/cosine launch logic.
    harness::registry().push_back({label("bias_silu", s, dt), "alignment", [s] { bias_silu_case<T>(s); }});
    harness::registry().push_back({label("bias_mse", s, dt), "alignment", [s] { bias_mse_case<T>(s); }});
    harness::registry().push_back(
        {label("bias_normalize_cosine", s, dt), "alignment", [s] { normalize_cosine_case<T>(s); }});
  }
}

const bool registered = [] {
  register_dtype<float>();
  register_dtype<bf16>();
  register_dtype<fp16>();
  return true;
}();

}  // namespace
