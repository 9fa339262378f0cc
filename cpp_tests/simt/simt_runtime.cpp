// The fiber scheduler behind simt.h: blocks run one after another on the calling OS thread,
// each CUDA thread of a block a ucontext fiber with its own guarded stack.
#include "simt.h"

#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <map>
#include <random>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define SIMT_ASAN 1
#else
#define SIMT_ASAN 0
#endif

namespace simt {

void fail(const char* tag, const std::string& message) {
  std::fprintf(stderr, "simt[%s]: %s\n", tag, message.c_str());
  std::fflush(stderr);
  std::abort();
}

// ---- Devices and schedules ---------------------------------------------------------------------
const Device& sm80() {
  static const Device d{"A100 (sm_80)", 8, 0, 108, 166912, 167936, 2048};
  return d;
}
const Device& sm90() {
  static const Device d{"H100 (sm_90)", 9, 0, 132, 232448, 233472, 2048};
  return d;
}

const Device& sm70() {
  static const Device d{"V100 (sm_70)", 7, 0, 80, 98304, 98304, 2048};
  return d;
}

const char* order_name(Order order) {
  switch (order) {
    case Order::kForward: return "forward";
    case Order::kReverse: return "reverse";
    case Order::kRandom: return "random";
    case Order::kWarpSerial: return "warp-serial";
    case Order::kWarpSerialReverse: return "warp-serial-reverse";
    case Order::kWarpSerialRandom: return "warp-serial-random";
  }
  return "?";
}

bool parse_order(const std::string& name, Order* order) {
  for (Order o : {Order::kForward, Order::kReverse, Order::kRandom, Order::kWarpSerial,
                  Order::kWarpSerialReverse, Order::kWarpSerialRandom})
    if (name == order_name(o)) {
      *order = o;
      return true;
    }
  return false;
}

namespace {

constexpr size_t kStackBytes = 256 * 1024;
constexpr size_t kStaticSmemLimit = 48 * 1024;

enum class State { kRunnable, kBarrier, kWarp, kExited };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;  // usable stack (a PROT_NONE guard page lies below it)
  int tid = 0;
  State state = State::kRunnable;
  const char* what = nullptr;  // where it waits
  const char* file = nullptr;
  int line = 0;
  uint32_t mask = 0;
  uint32_t in[16] = {};
  uint32_t out[16] = {};
  CollectiveOp op = nullptr;
  const void* op_ctx = nullptr;
  size_t next_shared = 0;  // index of the next static shared declaration it reaches
  void* fake_stack = nullptr;
};

struct Block {
  uint3 idx{0, 0, 0};
  int threads = 0;
  std::vector<void*> shared;
  std::vector<size_t> shared_bytes;
  size_t static_bytes = 0;
  void* dynamic = nullptr;
};

struct Launch {
  dim3 grid, block;
  size_t dynamic_bytes = 0;
  std::function<void()> body;
};

struct Config {
  const Device* device = &sm90();
  Order order = Order::kForward;
  uint64_t seed = 0;
};

Config g_config;
Counters g_counters{};
uint64_t g_launches = 0;
std::map<const void*, size_t> g_opt_in;  // kernel -> max dynamic shared memory attribute

// State of the block that runs on this OS thread.
thread_local Launch* t_launch = nullptr;
thread_local Block* t_block = nullptr;
thread_local Fiber* t_fiber = nullptr;
thread_local ucontext_t t_scheduler;
thread_local const void* t_sched_bottom = nullptr;
thread_local size_t t_sched_size = 0;
thread_local std::vector<Fiber>* t_fibers = nullptr;

std::string where(const Fiber& f) {
  return std::string(f.what ? f.what : "?") + " at " + (f.file ? f.file : "?") + ":" + std::to_string(f.line);
}

std::string thread_name(int tid) {
  return "block (" + std::to_string(t_block->idx.x) + "," + std::to_string(t_block->idx.y) + "," +
         std::to_string(t_block->idx.z) + ") thread " + std::to_string(tid) + " (warp " +
         std::to_string(tid / 32) + " lane " + std::to_string(tid % 32) + ")";
}

// ---- Fiber stacks ---------------------------------------------------------------------------
struct StackPool {
  std::vector<char*> stacks;
  char* get(size_t i) {
    while (stacks.size() <= i) {
      const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
      void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) fail("runtime", "cannot map a fiber stack");
      mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting
      stacks.push_back(static_cast<char*>(p) + page);
    }
    return stacks[i];
  }
};
thread_local StackPool t_stacks;

// ---- Switching, with AddressSanitizer told about every stack change -----------------------
void switch_to_fiber(Fiber* f) {
  t_fiber = f;
#if SIMT_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f->stack, kStackBytes);
#endif
  swapcontext(&t_scheduler, &f->ctx);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  ++g_counters.switches;
}

void switch_to_scheduler() {
  Fiber* self = t_fiber;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(&self->fake_stack, t_sched_bottom, t_sched_size);
#endif
  swapcontext(&self->ctx, &t_scheduler);
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(self->fake_stack, nullptr, nullptr);
#endif
}

void fiber_main() {
#if SIMT_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &t_sched_bottom, &t_sched_size);
#endif
  t_launch->body();
  t_fiber->state = State::kExited;
#if SIMT_ASAN
  __sanitizer_start_switch_fiber(nullptr, t_sched_bottom, t_sched_size);  // this stack is done
#endif
  setcontext(&t_scheduler);
}

// ---- Barrier and collective bookkeeping -----------------------------------------------------
// Lanes [0, 32) of warp w that exist in this block.
uint32_t present_lanes(int warp) {
  const int first = warp * 32;
  const int count = std::min(32, t_block->threads - first);
  return count >= 32 ? 0xffffffffu : ((1u << count) - 1u);
}

// A thread that is about to wait at a barrier, or to exit, must not be awaited by a collective.
void check_not_awaited(const Fiber& f, const char* doing) {
  auto& fibers = *t_fibers;
  const int warp = f.tid / 32, lane = f.tid % 32;
  for (int l = 0; l < 32; ++l) {
    const int tid = warp * 32 + l;
    if (tid >= t_block->threads) break;
    const Fiber& other = fibers[tid];
    if (other.state == State::kWarp && (other.mask >> lane & 1u))
      fail("warp", thread_name(other.tid) + " waits in " + where(other) + " for lane " + std::to_string(lane) +
                       ", which " + doing);
  }
}

void maybe_release_barrier() {
  auto& fibers = *t_fibers;
  int waiting = 0, exited = 0;
  const Fiber* first = nullptr;
  for (const Fiber& f : fibers) {
    if (f.state == State::kBarrier) {
      ++waiting;
      if (!first) first = &f;
    } else if (f.state == State::kExited) {
      ++exited;
    }
  }
  if (waiting == 0 || waiting + exited < t_block->threads) return;
  if (exited > 0)
    fail("barrier", std::to_string(exited) + " thread(s) of the block exited while " + std::to_string(waiting) +
                        " wait in " + where(*first));
  for (Fiber& f : fibers) f.state = State::kRunnable;
  ++g_counters.barriers;
}

void maybe_complete_collective(const Fiber& arrived) {
  auto& fibers = *t_fibers;
  const int warp = arrived.tid / 32;
  const uint32_t mask = arrived.mask;
  const uint32_t present = present_lanes(warp);
  if ((mask & ~present) != 0)
    fail("warp", thread_name(arrived.tid) + ": " + where(arrived) + " names lanes that do not exist (mask " +
                     std::to_string(mask) + ", block of " + std::to_string(t_block->threads) + " threads)");
  if (!(mask >> (arrived.tid % 32) & 1u))
    fail("warp", thread_name(arrived.tid) + ": " + where(arrived) + " with a mask that leaves out the caller");
  for (int lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    const Fiber& f = fibers[warp * 32 + lane];
    if (f.state == State::kExited)
      fail("warp", thread_name(arrived.tid) + " waits in " + where(arrived) + " for lane " + std::to_string(lane) +
                       ", which has exited");
    if (f.state == State::kBarrier)
      fail("warp", thread_name(arrived.tid) + " waits in " + where(arrived) + " for lane " + std::to_string(lane) +
                       ", which waits in " + where(f));
    if (f.state == State::kWarp && (f.file != arrived.file || f.line != arrived.line || f.mask != mask))
      fail("warp", thread_name(arrived.tid) + " waits in " + where(arrived) + " while lane " + std::to_string(lane) +
                       " of its mask waits in " + where(f) + " (mask " + std::to_string(f.mask) + ")");
    if (f.state != State::kWarp) return;  // not there yet
  }
  uint32_t in[32][16] = {}, out[32][16] = {};
  for (int lane = 0; lane < 32; ++lane)
    if (mask >> lane & 1u) std::memcpy(in[lane], fibers[warp * 32 + lane].in, sizeof(in[lane]));
  arrived.op(in, out, mask, arrived.op_ctx);
  for (int lane = 0; lane < 32; ++lane) {
    if (!(mask >> lane & 1u)) continue;
    Fiber& f = fibers[warp * 32 + lane];
    std::memcpy(f.out, out[lane], sizeof(f.out));
    f.state = State::kRunnable;
  }
  ++g_counters.collectives;
}

Fiber& self(const char* what) {
  if (t_fiber == nullptr) fail("runtime", std::string(what) + " called outside a kernel");
  return *t_fiber;
}

// ---- Scheduling --------------------------------------------------------------------------
struct Picker {
  Order order;
  std::mt19937_64 rng;
  std::vector<int> warp_rank;  // priority of each warp (lower runs first) for warp-serial orders
  int last = -1;

  Picker(Order o, uint64_t seed, int threads) : order(o), rng(seed) {
    const int warps = (threads + 31) / 32;
    warp_rank.resize(warps);
    for (int w = 0; w < warps; ++w) warp_rank[w] = o == Order::kWarpSerialReverse ? warps - 1 - w : w;
    if (o == Order::kWarpSerialRandom) std::shuffle(warp_rank.begin(), warp_rank.end(), rng);
  }

  int pick(const std::vector<Fiber>& fibers) {
    const int n = static_cast<int>(fibers.size());
    auto runnable = [&](int i) { return fibers[i].state == State::kRunnable; };
    int chosen = -1;
    switch (order) {
      case Order::kForward:
        for (int k = 1; k <= n && chosen < 0; ++k)
          if (runnable((last + k + n) % n)) chosen = (last + k + n) % n;
        break;
      case Order::kReverse:
        for (int k = 1; k <= n && chosen < 0; ++k) {
          const int i = ((last < 0 ? n : last) - k + 2 * n) % n;
          if (runnable(i)) chosen = i;
        }
        break;
      case Order::kRandom: {
        std::vector<int> live;
        for (int i = 0; i < n; ++i)
          if (runnable(i)) live.push_back(i);
        if (!live.empty()) chosen = live[rng() % live.size()];
        break;
      }
      default: {  // warp-serial: the runnable lane of the highest-priority warp
        int best_rank = 1 << 30;
        for (int i = 0; i < n; ++i)
          if (runnable(i) && warp_rank[i / 32] < best_rank) {
            best_rank = warp_rank[i / 32];
            chosen = i;
          }
        break;
      }
    }
    if (chosen >= 0) last = chosen;
    return chosen;
  }
};

void run_block(Launch& launch, uint3 block_index, std::vector<Fiber>& fibers) {
  const int threads = static_cast<int>(launch.block.x * launch.block.y * launch.block.z);
  Block block;
  block.idx = block_index;
  block.threads = threads;
  // Dynamic shared memory: exactly the launched size (ASan guards the rest), NaN bytes.
  block.dynamic = std::malloc(launch.dynamic_bytes == 0 ? 0 : launch.dynamic_bytes);
  if (launch.dynamic_bytes) std::memset(block.dynamic, 0xFF, launch.dynamic_bytes);
  t_block = &block;
  t_launch = &launch;
  t_fibers = &fibers;
  fibers.assign(threads, Fiber{});
  for (int i = 0; i < threads; ++i) {
    Fiber& f = fibers[i];
    f.tid = i;
    f.stack = t_stacks.get(i);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_main, 0);
  }
  const uint64_t block_linear =
      block_index.x + static_cast<uint64_t>(launch.grid.x) * (block_index.y + static_cast<uint64_t>(launch.grid.y) * block_index.z);
  Picker picker(g_config.order, g_config.seed * 0x9E3779B97F4A7C15ull + g_launches * 1000003ull + block_linear,
                threads);
  for (;;) {
    const int next = picker.pick(fibers);
    if (next < 0) {
      bool all_exited = true;
      for (const Fiber& f : fibers) all_exited = all_exited && f.state == State::kExited;
      if (all_exited) break;
      std::string report = "no thread can make progress:";
      int shown = 0;
      for (const Fiber& f : fibers)
        if (f.state != State::kExited && shown++ < 6) report += "\n  " + thread_name(f.tid) + " waits in " + where(f);
      fail("deadlock", report);
    }
    switch_to_fiber(&fibers[next]);
    Fiber& f = fibers[next];
    t_fiber = nullptr;
    if (f.state == State::kExited) {
      check_not_awaited(f, "has exited");
      maybe_release_barrier();
    } else if (f.state == State::kBarrier) {
      maybe_release_barrier();
    } else if (f.state == State::kWarp) {
      maybe_complete_collective(f);
    }
  }
  for (void* p : block.shared) std::free(p);
  std::free(block.dynamic);
  g_counters.blocks += 1;
  g_counters.threads += static_cast<uint64_t>(threads);
  t_block = nullptr;
  t_fibers = nullptr;
}

}  // namespace

void configure(const Device& device, Order order, uint64_t seed) {
  g_config.device = &device;
  g_config.order = order;
  g_config.seed = seed;
  g_opt_in.clear();  // a new "process" on the device: attributes are set again
}

const Device& current_device() { return *g_config.device; }

Counters counters() { return g_counters; }

uint3 thread_idx() {
  const Fiber& f = self("threadIdx");
  const dim3 b = t_launch->block;
  const unsigned t = static_cast<unsigned>(f.tid);
  return {t % b.x, (t / b.x) % b.y, t / (b.x * b.y)};
}
uint3 block_idx() {
  self("blockIdx");
  return t_block->idx;
}
dim3 block_dim() {
  self("blockDim");
  return t_launch->block;
}
dim3 grid_dim() {
  self("gridDim");
  return t_launch->grid;
}

void syncthreads(const char* file, int line) {
  Fiber& f = self("__syncthreads");
  for (const Fiber& other : *t_fibers)
    if (other.state == State::kBarrier && (other.file != file || other.line != line)) {
      f.what = "__syncthreads";
      f.file = file;
      f.line = line;
      fail("barrier", thread_name(f.tid) + " reaches " + where(f) + " while " + thread_name(other.tid) +
                          " waits in " + where(other));
    }
  f.state = State::kBarrier;
  f.what = "__syncthreads";
  f.file = file;
  f.line = line;
  check_not_awaited(f, "waits at __syncthreads");
  switch_to_scheduler();
}

void warp_collective(const char* what, const char* file, int line, uint32_t mask, const uint32_t* in,
                     int in_words, uint32_t* out, int out_words, CollectiveOp op, const void* ctx) {
  Fiber& f = self(what);
  f.state = State::kWarp;
  f.what = what;
  f.file = file;
  f.line = line;
  f.mask = mask;
  std::memset(f.in, 0, sizeof(f.in));
  if (in_words > 0) std::memcpy(f.in, in, sizeof(uint32_t) * in_words);
  f.op = op;
  f.op_ctx = ctx;
  switch_to_scheduler();
  if (out_words > 0) std::memcpy(out, f.out, sizeof(uint32_t) * out_words);
}

void syncwarp_at(const char* file, int line, uint32_t mask) {
  warp_collective("__syncwarp", file, line, mask, nullptr, 0, nullptr, 0,
                  [](const uint32_t (*)[16], uint32_t (*)[16], uint32_t, const void*) {}, nullptr);
}

void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16, const char* file,
                  int line) {
  if (g_config.device->major < 8)
    fail("arch", std::string("mma.sync.m16n8k16 executed on ") + g_config.device->name + ", which lacks it (sm_80+)");
  uint32_t in[10];
  std::memcpy(in, a, 16);
  std::memcpy(in + 4, b, 8);
  std::memcpy(in + 6, c, 16);
  uint32_t out[4];
  static const bool kBf16 = true, kHalf = false;
  warp_collective(
      bf16 ? "mma.m16n8k16.bf16" : "mma.m16n8k16.f16", file, line, 0xffffffffu, in, 10, out, 4,
      [](const uint32_t (*lanes)[16], uint32_t (*outs)[16], uint32_t mask, const void* ctx) {
        if (mask != 0xffffffffu) fail("warp", "mma.sync needs the whole warp");
        const bool is_bf16 = *static_cast<const bool*>(ctx);
        auto value = [&](uint32_t reg, int high) {
          const uint16_t bits = static_cast<uint16_t>(high ? reg >> 16 : reg & 0xffffu);
          return is_bf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
        };
        float A[16][16], B[16][8], C[16][8];
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          const uint32_t* r = lanes[lane];
          for (int h = 0; h < 2; ++h) {
            A[g][2 * t + h] = value(r[0], h);
            A[g + 8][2 * t + h] = value(r[1], h);
            A[g][2 * t + 8 + h] = value(r[2], h);
            A[g + 8][2 * t + 8 + h] = value(r[3], h);
            B[2 * t + h][g] = value(r[4], h);
            B[2 * t + 8 + h][g] = value(r[5], h);
          }
          float cf[4];
          std::memcpy(cf, r + 6, 16);
          C[g][2 * t] = cf[0];
          C[g][2 * t + 1] = cf[1];
          C[g + 8][2 * t] = cf[2];
          C[g + 8][2 * t + 1] = cf[3];
        }
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane / 4, t = lane % 4;
          const int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
          float d[4];
          for (int e = 0; e < 4; ++e) {
            float acc = C[rows[e]][cols[e]];
            for (int k = 0; k < 16; ++k) acc += A[rows[e]][k] * B[k][cols[e]];  // products exact in fp32
            d[e] = acc;
          }
          std::memcpy(outs[lane], d, 16);
        }
      },
      bf16 ? &kBf16 : &kHalf);
  std::memcpy(c, out, 16);
}

void* shared_array(size_t bytes, const char* file, int line) {
  Fiber& f = self("__shared__");
  Block& b = *t_block;
  if (f.next_shared == b.shared.size()) {
    b.static_bytes += bytes;
    if (b.static_bytes > kStaticSmemLimit)
      fail("launch", "static shared memory of " + std::to_string(b.static_bytes) + " bytes exceeds 48 KiB (" +
                         std::string(file) + ":" + std::to_string(line) + ")");
    if (b.static_bytes + t_launch->dynamic_bytes > g_config.device->smem_per_block_optin)
      fail("launch", "static + dynamic shared memory (" + std::to_string(b.static_bytes + t_launch->dynamic_bytes) +
                         " bytes) exceeds the " + g_config.device->name + " limit of " +
                         std::to_string(g_config.device->smem_per_block_optin));
    void* p = std::malloc(bytes);
    std::memset(p, 0xFF, bytes);  // NaN in fp32, bf16 and fp16
    b.shared.push_back(p);
    b.shared_bytes.push_back(bytes);
  } else if (f.next_shared > b.shared.size() || b.shared_bytes[f.next_shared] != bytes) {
    fail("runtime", "threads of one block declare different shared arrays at " + std::string(file) + ":" +
                        std::to_string(line));
  }
  return b.shared[f.next_shared++];
}

void* dynamic_shared() {
  self("extern __shared__");
  return t_block->dynamic;
}

void set_max_dynamic_shared(const void* kernel, size_t bytes) {
  if (bytes > g_config.device->smem_per_block_optin)
    fail("launch", "cudaFuncSetAttribute: " + std::to_string(bytes) + " bytes of dynamic shared memory exceed the " +
                       g_config.device->name + " opt-in limit of " +
                       std::to_string(g_config.device->smem_per_block_optin));
  g_opt_in[kernel] = bytes;
}

void launch(const void* kernel_id, dim3 grid, dim3 block, size_t dynamic_smem, std::function<void()> body) {
  const uint64_t threads = static_cast<uint64_t>(block.x) * block.y * block.z;
  auto shape = [](dim3 d) {
    return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
  };
  if (threads == 0 || threads > 1024 || block.z > 64)
    fail("launch", "block " + shape(block) + ": 1 to 1024 threads, z <= 64");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    fail("launch", "grid " + shape(grid) + ": x in [1, 2^31 - 1], y and z in [1, 65535]");
  if (dynamic_smem > kStaticSmemLimit) {
    auto it = g_opt_in.find(kernel_id);
    if (it == g_opt_in.end() || it->second < dynamic_smem)
      fail("launch", std::to_string(dynamic_smem) +
                         " bytes of dynamic shared memory need cudaFuncSetAttribute(MaxDynamicSharedMemorySize) first" +
                         (it == g_opt_in.end() ? std::string(" (never set)") : " (set to " + std::to_string(it->second) + ")"));
  }
  if (dynamic_smem > g_config.device->smem_per_block_optin)
    fail("launch", std::to_string(dynamic_smem) + " bytes of dynamic shared memory exceed the " +
                       g_config.device->name + " limit");
  Launch l;
  l.grid = grid;
  l.block = block;
  l.dynamic_bytes = dynamic_smem;
  l.body = std::move(body);
  std::vector<Fiber> fibers;
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) run_block(l, uint3{x, y, z}, fibers);
  ++g_launches;
}

// ---- 16-bit conversions ---------------------------------------------------------------------
uint16_t float_to_bf16_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  x += 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>(x >> 16);
}

float bf16_bits_to_float(uint16_t b) {
  const uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t float_to_half_bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) return static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to infinity
  if (a < 0x38800000u) {  // below 2^-14: a subnormal (or zero) half, in units of 2^-24
    float mag;
    std::memcpy(&mag, &a, 4);
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(mag * 16777216.0f)));
  }
  const uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return static_cast<uint16_t>(sign | ((rounded - 0x38000000u) >> 13));
}

float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, mant = h & 0x3ffu;
  uint32_t x;
  if (exp == 0) {
    const float mag = static_cast<float>(mant) * (1.0f / 16777216.0f);
    std::memcpy(&x, &mag, 4);
    x |= sign;
  } else if (exp == 31) {
    x = sign | 0x7f800000u | (mant << 13);
  } else {
    x = sign | ((exp + 112u) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace simt
