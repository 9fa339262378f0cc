// C++ unit test: the alignment ops through the dispatcher (as a C++ user calls them)
// against the same formulas written with ATen operators.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <string>
#include <tuple>

#ifdef __linux__
#include <filesystem>
#include <fstream>
#include <set>
#endif

namespace {

int failures = 0;

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  const double err = (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>();
  const bool ok = got.sizes() == want.sizes() && err <= tol;
  std::printf("%s %s (max abs error %.3g)\n", ok ? "ok  " : "FAIL", what.c_str(), err);
  if (!ok) ++failures;
}

template <typename Signature>
auto op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
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
  const auto x = at::randn({37, 19}, at::kFloat);
  const auto bias = at::randn({19}, at::kFloat);
  const auto y = at::randn({37, 19}, at::kFloat);
  const auto grad = at::randn({37, 19}, at::kFloat);
  const auto z = x + bias;

  auto silu = op<at::Tensor(const at::Tensor&, const at::Tensor&)>("gfcore::bias_silu");
  expect_close(silu.call(x, bias), at::silu(z), 1e-5, "bias_silu");

  auto silu_backward =
      op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&)>(
          "gfcore::bias_silu_backward");
  const auto [grad_x, grad_bias] = silu_backward.call(grad, x, bias);
  const auto s = at::sigmoid(z);
  const auto want_grad = grad * s * (1 + z * (1 - s));
  expect_close(grad_x, want_grad, 1e-5, "bias_silu_backward grad_x");
  expect_close(grad_bias, want_grad.sum(0), 1e-4, "bias_silu_backward grad_bias");

  auto normalize_cosine =
      op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                        double)>("gfcore::bias_normalize_cosine");
  const auto [zhat, cos, norms] = normalize_cosine.call(x, bias, y, 1e-8);
  expect_close(zhat, z / z.norm(2, {1}, true), 1e-5, "bias_normalize_cosine zhat");
  expect_close(cos, at::cosine_similarity(z, y, 1, 1e-8), 1e-5, "bias_normalize_cosine cos");

  auto mse = op<std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                               const at::Tensor&)>("gfcore::bias_mse");
  const auto [loss, diff, colsum] = mse.call(x, bias, y);
  expect_close(loss, at::mse_loss(z, y), 1e-5, "bias_mse loss");
  expect_close(diff, z - y, 1e-6, "bias_mse diff");
  expect_close(colsum, (z - y).sum(0), 1e-4, "bias_mse colsum");

  // Bad input is refused with a message naming the argument.
  try {
    silu.call(x, bias.slice(0, 0, 5));
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
