// C++ unit test: the alignment ops through the dispatcher (as a C++ user calls them) against the
// same formulas written with ATen operators in float64 (the backward against autograd), for
// float32, float64 and bfloat16 inputs and odd shapes (a single row, widths that are not a
// multiple of the vector width).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <tuple>

namespace {

int failures = 0;

// ||got - want|| / ||want|| <= tol, in float64: a zero, halved or misplaced output fails
// whatever the magnitude of the values compared.
void expect_rel(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  const auto g = got.to(at::kDouble);
  const auto w = want.to(at::kDouble);
  const bool same_shape = got.sizes() == want.sizes();
  const double err = same_shape ? ((g - w).norm().item<double>() / std::max(w.norm().item<double>(), 1e-300)) : -1;
  const bool ok = same_shape && err <= tol;
  std::printf("%s %s (relative error %.3g, tolerance %.3g)\n", ok ? "ok  " : "FAIL", what.c_str(), err, tol);
  if (!ok) ++failures;
}

void expect_dtype(const at::Tensor& t, at::ScalarType dtype, const std::string& what) {
  const bool ok = t.scalar_type() == dtype;
  std::printf("%s %s dtype %s\n", ok ? "ok  " : "FAIL", what.c_str(), c10::toString(t.scalar_type()));
  if (!ok) ++failures;
}

template <typename Signature>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

double unit_roundoff(at::ScalarType dtype) {
  switch (dtype) {
    case at::kBFloat16: return 1.0 / 256;  // 8 significant bits
    case at::kFloat: return 1.0 / (1 << 24);
    default: return 1.0 / (1ull << 53);
  }
}

// Every op for inputs of one dtype and shape. Tolerances: outputs stored in the input dtype
// may be off by its rounding (4 u, u the unit roundoff; the statistics are accumulated in
// float32 / float64); the statistics (cos, norms, loss, column sums) are float32 (float64 for
// float64 inputs) computed from the same input values as the reference, so they get the
// accumulation dtype's tolerance, except where they are computed from rounded outputs.
void check_ops(at::ScalarType dtype, int64_t rows, int64_t cols) {
  const std::string tag = std::string(c10::toString(dtype)) + " " + std::to_string(rows) + "x" + std::to_string(cols);
  const auto opts = at::TensorOptions().dtype(dtype);
  const auto x = at::randn({rows, cols}).to(opts);
  const auto bias = at::randn({cols}).to(opts);
  const auto y = at::randn({rows, cols}).to(opts);
  const auto grad = at::randn({rows, cols}).to(opts);
  const auto stat = dtype == at::kDouble ? at::kDouble : at::kFloat;
  const double tol_out = 4 * unit_roundoff(dtype) + 1e-12;
  const double tol_stat = 256 * unit_roundoff(stat) + 1e-12;
  // the reference, in float64 from the same (rounded) input values
  const auto xd = x.to(at::kDouble), bd = bias.to(at::kDouble), yd = y.to(at::kDouble), gd = grad.to(at::kDouble);
  const auto z = xd + bd;

  auto silu = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("gfcore::bias_silu");
  const auto silu_out = silu.call(x, bias);
  expect_dtype(silu_out, dtype, tag + " bias_silu");
  expect_rel(silu_out, z / (1 + at::exp(-z)), tol_out, tag + " bias_silu");

  auto silu_backward =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
          "gfcore::bias_silu_backward");
  const auto [grad_x, grad_bias] = silu_backward.call(grad, x, bias);
  const auto s = at::sigmoid(z);
  const auto want_grad = gd * s * (1 + z * (1 - s));
  expect_rel(grad_x, want_grad, tol_out, tag + " bias_silu_backward grad_x");
  expect_dtype(grad_bias, stat, tag + " bias_silu_backward grad_bias");
  expect_rel(grad_bias, want_grad.sum(0), tol_stat, tag + " bias_silu_backward grad_bias");

  auto normalize_cosine =
      op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        double)>("gfcore::bias_normalize_cosine");
  const double eps = 1e-8;
  const auto [zhat, cos, norms] = normalize_cosine.call(x, bias, y, eps);
  const auto z_norm = z.norm(2, {1});
  const auto y_norm = yd.norm(2, {1});
  expect_rel(zhat, z / z_norm.unsqueeze(1), tol_out, tag + " bias_normalize_cosine zhat");
  expect_dtype(cos, stat, tag + " bias_normalize_cosine cos");
  expect_rel(cos, (z * yd).sum(1) / (z_norm * y_norm), tol_stat, tag + " bias_normalize_cosine cos");
  expect_dtype(norms, stat, tag + " bias_normalize_cosine norms");
  expect_rel(norms, at::stack({z_norm, y_norm}, 1), tol_stat, tag + " bias_normalize_cosine norms [|z|, |y|]");

  // backward of (zhat, cos) against autograd through the float64 formulas
  auto normalize_cosine_backward =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&, const at::Tensor&, double)>(
          "gfcore::bias_normalize_cosine_backward");
  const auto grad_cos = at::randn({rows}).to(stat);
  const auto [grad_nc_x, grad_nc_bias] = normalize_cosine_backward.call(grad, grad_cos, zhat, y, cos, norms, eps);
  auto zv = z.detach().clone().requires_grad_(true);
  const auto zv_norm = zv.norm(2, {1});
  const auto objective = (gd * (zv / zv_norm.unsqueeze(1))).sum() +
                         (grad_cos.to(at::kDouble) * (zv * yd).sum(1) / (zv_norm * y_norm)).sum();
  objective.backward();
  const auto want_nc = zv.grad();
  // the kernel works from the rounded zhat: the input dtype's tolerance for both outputs
  expect_dtype(grad_nc_x, dtype, tag + " bias_normalize_cosine_backward grad_x");
  expect_rel(grad_nc_x, want_nc, 2 * tol_out + tol_stat, tag + " bias_normalize_cosine_backward grad_x");
  expect_dtype(grad_nc_bias, stat, tag + " bias_normalize_cosine_backward grad_bias");
  expect_rel(grad_nc_bias, want_nc.sum(0), 2 * tol_out + tol_stat, tag + " bias_normalize_cosine_backward grad_bias");

  auto mse = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&)>("gfcore::bias_mse");
  const auto [loss, diff, colsum] = mse.call(x, bias, y);
  expect_dtype(loss, stat, tag + " bias_mse loss");
  expect_rel(loss, (z - yd).pow(2).mean(), tol_stat, tag + " bias_mse loss");
  expect_rel(diff, z - yd, tol_out, tag + " bias_mse diff");
  expect_rel(colsum, (z - yd).sum(0), tol_stat, tag + " bias_mse colsum");
}

#ifdef __linux__
// The OpenMP runtimes mapped into this process: exactly one, and torch's own copy when torch
// ships one beside libtorch_cpu.so. A second runtime would run gfcore's parallel regions on a
// thread pool of its own, deaf to at::set_num_threads and competing with torch's for cores.
void check_one_openmp_runtime() {
  std::ifstream maps("/proc/self/maps");
  std::set<std::string> runtimes;
  std::filesystem::path torch_lib;
  for (std::string line; std::getline(maps, line);) {
    const auto slash = line.find('/');
    if (slash == std::string::npos) continue;
    const std::filesystem::path path = line.substr(slash);
    const std::string name = path.filename().string();
    for (const char* runtime : {"libgomp", "libomp", "libiomp"}) {
      if (name.rfind(runtime, 0) == 0) runtimes.insert(path.string());
    }
    if (name == "libtorch_cpu.so") torch_lib = path.parent_path();
  }
  std::string list;
  for (const auto& r : runtimes) list += " " + r;
  bool ok = runtimes.size() == 1;
  const auto torch_gomp = torch_lib / "libgomp.so.1";
  if (ok && !torch_lib.empty() && std::filesystem::exists(torch_gomp)) {
    ok = std::filesystem::equivalent(*runtimes.begin(), torch_gomp);
  }
  std::printf("%s one OpenMP runtime, torch's if it ships one (mapped:%s)\n", ok ? "ok  " : "FAIL",
              list.c_str());
  if (!ok) ++failures;
}
#endif

}  // namespace

int main() {
#ifdef __linux__
  check_one_openmp_runtime();
#endif
  at::manual_seed(0);
  check_ops(at::kFloat, 37, 19);
  check_ops(at::kFloat, 1, 131);  // one row; a width with a remainder after any vector width
  check_ops(at::kDouble, 7, 3);
  check_ops(at::kBFloat16, 33, 67);

  // Bad input is refused with a message naming the argument.
  auto silu = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("gfcore::bias_silu");
  const auto x = at::randn({4, 5});
  try {
    silu.call(x, at::randn({3}));
    std::printf("FAIL bias of the wrong size was accepted\n");
    ++failures;
  } catch (const c10::Error& e) {
    const bool named = std::string(e.what()).find("bias must be 1-D") != std::string::npos;
    std::printf("%s wrong bias size is refused by name\n", named ? "ok  " : "FAIL");
    if (!named) ++failures;
  }
  std::printf("%d failed\n", failures);
  return failures == 0 ? 0 : 1;
}
