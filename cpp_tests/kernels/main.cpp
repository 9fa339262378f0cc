// The kernel harness's driver: runs every registered case under every schedule, each run in
// its own forked process (a sanitizer report or a simt check aborts that run alone).
//   kernel_tests [--filter SUBSTRING] [--exclude SUBSTRING] [--family alignment|attention] [--orders a,b,...]
//                [--seed N] [--jobs N] [--list] [--fail-fast] [--verbose]
// --fail-fast stops after the first failing case (its other schedules still run, to show which
// orders catch it); --verbose prints every run with its wall time and its output.
// Prints one line per failing run with the check that caught it, then
// "kernels: N passed, M failed" (runs, not cases).
#if !defined(GFCORE_SIMT)
#include "main_gpu.inc"
#else
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <sstream>

#include "harness.h"

namespace harness {
std::vector<Case>& registry() {
  static std::vector<Case> cases;
  return cases;
}
}  // namespace harness

namespace {

struct Run {
  const harness::Case* c;
  simt::Order order;
};

std::string tag_of(const std::string& log, int status) {
  // The first tagged line names the check that failed.
  for (const char* tag : {"simt[", "harness[", "AddressSanitizer", "runtime error:", "UndefinedBehaviorSanitizer"}) {
    const size_t at = log.find(tag);
    if (at != std::string::npos) {
      const size_t end = log.find('\n', at);
      return log.substr(at, end == std::string::npos ? std::string::npos : end - at);
    }
  }
  std::ostringstream os;
  if (WIFSIGNALED(status)) os << "killed by signal " << WTERMSIG(status);
  else os << "exit status " << WEXITSTATUS(status);
  return os.str();
}

}  // namespace

int main(int argc, char** argv) {
  std::string filter, exclude, family;
  std::vector<simt::Order> orders = {simt::Order::kForward,    simt::Order::kReverse,
                                     simt::Order::kRandom,     simt::Order::kWarpSerial,
                                     simt::Order::kWarpSerialReverse, simt::Order::kWarpSerialRandom};
  uint64_t seed = 1;
  int jobs = 2;
  bool list = false, fail_fast = false, verbose = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--filter") filter = value();
    else if (a == "--exclude") exclude = value();
    else if (a == "--family") family = value();
    else if (a == "--seed") seed = std::stoull(value());
    else if (a == "--jobs") jobs = std::max(1, std::stoi(value()));
    else if (a == "--list") list = true;
    else if (a == "--fail-fast") fail_fast = true;
    else if (a == "--verbose") verbose = true;
    else if (a == "--orders") {
      orders.clear();
      std::stringstream ss(value());
      std::string name;
      while (std::getline(ss, name, ',')) {
        simt::Order o;
        if (!simt::parse_order(name, &o)) {
          std::fprintf(stderr, "unknown order %s\n", name.c_str());
          return 2;
        }
        orders.push_back(o);
      }
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  std::vector<Run> runs;
  std::map<std::string, int> per_family;
  for (const auto& c : harness::registry()) {
    if (!filter.empty() && c.name.find(filter) == std::string::npos) continue;
    if (!exclude.empty() && c.name.find(exclude) != std::string::npos) continue;
    if (!family.empty() && c.family != family) continue;
    if (list) std::printf("%s %s (sm_%d)\n", c.family.c_str(), c.name.c_str(), c.arch);
    ++per_family[c.family];
    for (auto o : orders) runs.push_back({&c, o});
  }
  if (list) return 0;
  const auto start = std::chrono::steady_clock::now();
  std::map<pid_t, std::pair<Run, std::string>> live;
  std::map<pid_t, std::chrono::steady_clock::time_point> started;
  const harness::Case* failed_case = nullptr;
  int passed = 0, failed = 0;
  size_t next = 0;
  auto reap = [&]() {
    int status = 0;
    const pid_t pid = wait(&status);
    auto it = live.find(pid);
    if (it == live.end()) return;
    const Run run = it->second.first;
    const std::string path = it->second.second;
    live.erase(it);
    std::ifstream in(path);
    std::stringstream log;
    log << in.rdbuf();
    unlink(path.c_str());
    const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - started[pid]).count();
    started.erase(pid);
    if (verbose) {
      std::printf("%s %s [%s] %.2f s\n", ok ? "ok  " : "fail", run.c->name.c_str(), simt::order_name(run.order), took);
      if (!log.str().empty()) std::printf("%s", log.str().c_str());  // the run's own output
    }
    if (!ok && failed_case == nullptr) failed_case = run.c;
    if (ok) {
      ++passed;
    } else {
      ++failed;
      std::printf("FAIL %s [%s]: %s\n", run.c->name.c_str(), simt::order_name(run.order), tag_of(log.str(), status).c_str());
      std::fflush(stdout);
    }
  };
  while (next < runs.size() || !live.empty()) {
    // Fail-fast: once a case failed, launch only the remaining schedules of that case.
    while (fail_fast && failed_case && next < runs.size() && runs[next].c != failed_case) ++next;
    if (next < runs.size() && static_cast<int>(live.size()) < jobs) {
      const Run run = runs[next++];
      char path[] = "/tmp/gfcore-kernel-run-XXXXXX";
      const int fd = mkstemp(path);
      std::fflush(stdout);
      const pid_t pid = fork();
      if (pid == 0) {
        dup2(fd, 2);
        dup2(fd, 1);
        const simt::Device& dev = run.c->arch == 80 ? simt::sm80() : run.c->arch == 70 ? simt::sm70() : simt::sm90();
        simt::configure(dev, run.order, seed);
        run.c->run();
        std::fflush(stdout);
        std::_Exit(0);
      }
      close(fd);
      live[pid] = {run, path};
      started[pid] = std::chrono::steady_clock::now();
    } else {
      reap();
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("cases:");
  for (const auto& [fam, n] : per_family) std::printf(" %s %d", fam.c_str(), n);
  std::printf("; schedules per case: %zu; wall %.1f s\n", orders.size(), seconds);
  std::printf("kernels: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
#endif  // GFCORE_SIMT
