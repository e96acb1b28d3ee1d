// The emulator's scheduler: a grid's blocks one after another, each block's threads as fibers that
// meet at barriers and warp operations (the model is described in runtime.h).
#include "emu/runtime.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <random>
#include <vector>

#include "emu/fiber.h"

// Bounds of the static __shared__ variables of every emulated kernel (the linker defines them for a
// section whose name is a C identifier). One variable of our own keeps the section in existence.
extern "C" unsigned char __start_fluid_emu_shared[];
extern "C" unsigned char __stop_fluid_emu_shared[];
__attribute__((section("fluid_emu_shared"), aligned(16), used)) static unsigned char g_section_anchor[16];

namespace fluid_rt {
namespace emu {

ThreadState* g_thread = nullptr;
Dim3 g_block_idx, g_block_dim, g_grid_dim;
unsigned char* g_dynamic_smem = nullptr;

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr uint64_t kStackCanary = 0x5AFE57AC4CA7A121ull;
constexpr int kMaxThreads = 1024;
constexpr size_t kMaxStaticSmem = 48 * 1024;

std::mutex g_launch_mutex;  // one emulated launch at a time (shared memory is one copy)
std::mutex g_config_mutex;
Config g_config;
std::map<const void*, int> g_max_dynamic_smem;

enum class State { kReady, kAtBarrier, kAtWarp, kDone };
enum class WarpOp { kNone, kExchange, kBallot, kSync };

struct Fiber {
  FiberContext ctx;
  ThreadState ts;
  State state = State::kReady;
  WarpOp op = WarpOp::kNone;
  unsigned op_mask = 0;
  uint64_t parity = 0;  // count of warp ops this lane did: slots alternate so a fast lane cannot
                        // overwrite a value a slow lane has yet to read
};

struct Warp {
  int arrived = 0;
  int done = 0;
  int size = 32;
  uint64_t slots[2][32] = {};
};

// The block being run, and the scheduler context the fibers switch back to.
struct BlockRun {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  int at_barrier = 0;
  int done = 0;
  FiberContext scheduler;
  ThreadBody body = nullptr;
  void* ctx = nullptr;
  std::string error;
};
BlockRun* g_run = nullptr;

struct Stacks {
  unsigned char* base = nullptr;
  size_t count = 0;
  ~Stacks() {
    if (base) munmap(base, count * kStackBytes);
  }
  unsigned char* get(size_t i) { return base + i * kStackBytes; }
  void reserve(size_t n) {
    if (n <= count) return;
    if (base) munmap(base, count * kStackBytes);
    void* p = mmap(nullptr, n * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw EmuError("emu: cannot map fiber stacks");
    base = static_cast<unsigned char*>(p);
    count = n;
  }
};
Stacks g_stacks;

Fiber& current() { return g_run->fibers[g_thread->linear]; }

// Every thread that has not returned is at the barrier: all go on.
void release_barrier() {
  for (const Fiber& o : g_run->fibers)
    if (o.state == State::kAtWarp) fail("a barrier completed while other threads wait at a warp operation");
  for (Fiber& o : g_run->fibers)
    if (o.state == State::kAtBarrier) o.state = State::kReady;
  g_run->at_barrier = 0;
}

void release_warp(int warp);

void yield_to_scheduler() { fiber_switch(&current().ctx, &g_run->scheduler); }

void fiber_main(void* arg) {
  Fiber* f = static_cast<Fiber*>(arg);
  try {
    g_run->body(g_run->ctx);
  } catch (const std::exception& e) {
    if (g_run->error.empty()) g_run->error = e.what();
  } catch (...) {
    if (g_run->error.empty()) g_run->error = "unknown exception in an emulated thread";
  }
  f->state = State::kDone;
  g_run->done += 1;
  const int warp = f->ts.linear / 32;
  Warp& w = g_run->warps[warp];
  w.done += 1;
  // A thread that returns counts as arrived at the barrier and the warp operations others wait at.
  if (g_run->error.empty() && w.arrived > 0 && w.arrived + w.done == w.size) release_warp(warp);
  if (g_run->error.empty() && g_run->at_barrier > 0 &&
      g_run->at_barrier + g_run->done == static_cast<int>(g_run->fibers.size()))
    release_barrier();
  fiber_switch(&f->ctx, &g_run->scheduler);  // never resumed
}

// Lanes of a warp met: check they agree on the operation, then let them all go on.
void release_warp(int warp) {
  Warp& w = g_run->warps[warp];
  const int first = warp * 32;
  WarpOp op = WarpOp::kNone;
  unsigned mask = 0;
  for (int l = 0; l < w.size; ++l) {
    const Fiber& f = g_run->fibers[first + l];
    if (f.state != State::kAtWarp) continue;
    if (op == WarpOp::kNone) op = f.op, mask = f.op_mask;
    if (f.op != op || f.op_mask != mask)
      fail("divergent warp: lanes meet at different warp operations or masks");
  }
  for (int l = 0; l < w.size; ++l) {
    const Fiber& f = g_run->fibers[first + l];
    if ((mask >> l & 1u) && f.state == State::kDone)
      fail("warp operation whose mask names a lane that has returned");
  }
  for (int l = 0; l < w.size; ++l)
    g_run->fibers[first + l].state =
        g_run->fibers[first + l].state == State::kAtWarp ? State::kReady : g_run->fibers[first + l].state;
  w.arrived = 0;
}

// This lane arrives at a warp operation: wait for the whole warp (lanes that returned count).
void meet_warp(WarpOp op, unsigned mask) {
  Fiber& f = current();
  Warp& w = g_run->warps[f.ts.linear / 32];
  f.state = State::kAtWarp;
  f.op = op;
  f.op_mask = mask;
  w.arrived += 1;
  if (w.arrived + w.done == w.size) release_warp(f.ts.linear / 32);
  yield_to_scheduler();
  f.op = WarpOp::kNone;
  f.parity += 1;
}

std::vector<int> round_order(int n, Order order, std::mt19937_64& rng) {
  std::vector<int> idx(n);
  for (int i = 0; i < n; ++i) idx[i] = order == Order::kReverse ? n - 1 - i : i;
  if (order == Order::kRandom) std::shuffle(idx.begin(), idx.end(), rng);
  return idx;
}

void poison_shared(size_t dynamic_bytes, std::vector<unsigned char>& dynamic) {
  std::memset(__start_fluid_emu_shared, 0xFF,
              static_cast<size_t>(__stop_fluid_emu_shared - __start_fluid_emu_shared));
  std::memset(dynamic.data(), 0xFF, dynamic_bytes);
}

void check_stacks(size_t n) {
  for (size_t i = 0; i < n; ++i) {
    uint64_t v;
    std::memcpy(&v, g_stacks.get(i), sizeof(v));
    if (v != kStackCanary) throw EmuError("emu: a thread overflowed its 64 KiB fiber stack");
  }
}

// Runs every thread of the current block to completion under the configured order.
void run_block(BlockRun& run, std::mt19937_64& rng, Order order) {
  const int n = static_cast<int>(run.fibers.size());
  while (run.done < n) {
    bool progressed = false;
    for (int t : round_order(n, order, rng)) {
      Fiber& f = run.fibers[t];
      if (f.state != State::kReady) continue;
      g_thread = &f.ts;
      fiber_switch(&run.scheduler, &f.ctx);
      g_thread = nullptr;
      progressed = true;
      if (!run.error.empty()) throw EmuError("emu: " + run.error);
    }
    if (!progressed)
      throw EmuError("emu: deadlock: threads wait at barriers or warp operations that can never complete");
  }
}

}  // namespace

Config get_config() {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  return g_config;
}

void set_config(const Config& c) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_config = c;
}

void set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  g_max_dynamic_smem[kernel] = bytes;
}

int max_dynamic_smem(const void* kernel) {
  std::lock_guard<std::mutex> lock(g_config_mutex);
  auto it = g_max_dynamic_smem.find(kernel);
  return it == g_max_dynamic_smem.end() ? 0 : it->second;
}

[[noreturn]] void fail(const std::string& what) {
  if (g_run == nullptr || g_thread == nullptr) throw EmuError("emu: " + what);
  if (g_run->error.empty()) g_run->error = what;
  Fiber& f = current();
  f.state = State::kAtBarrier;  // parked for good: the scheduler stops the launch
  fiber_switch(&f.ctx, &g_run->scheduler);
  __builtin_unreachable();
}

void syncthreads() {
  Fiber& f = current();
  f.state = State::kAtBarrier;
  g_run->at_barrier += 1;
  if (g_run->at_barrier + g_run->done == static_cast<int>(g_run->fibers.size())) release_barrier();
  yield_to_scheduler();
}

void syncwarp(unsigned mask) { meet_warp(WarpOp::kSync, mask); }

uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane) {
  Fiber& f = current();
  Warp& w = g_run->warps[f.ts.linear / 32];
  const int lane = f.ts.linear % 32;
  const uint64_t p = f.parity & 1u;
  w.slots[p][lane] = value;
  meet_warp(WarpOp::kExchange, mask);
  if (src_lane < 0 || src_lane >= w.size || !(mask >> src_lane & 1u)) return value;
  return w.slots[p][src_lane];
}

unsigned warp_ballot(unsigned mask, bool pred) {
  Fiber& f = current();
  Warp& w = g_run->warps[f.ts.linear / 32];
  const int lane = f.ts.linear % 32;
  const uint64_t p = f.parity & 1u;
  w.slots[p][lane] = pred ? 1u : 0u;
  meet_warp(WarpOp::kBallot, mask);
  unsigned out = 0;
  for (int l = 0; l < w.size; ++l)
    if ((mask >> l & 1u) && w.slots[p][l]) out |= 1u << l;
  return out;
}

void run_grid(Dim3 grid, Dim3 block, size_t dynamic_smem_bytes, ThreadBody body, void* ctx) {
  std::lock_guard<std::mutex> lock(g_launch_mutex);
  const uint64_t nthreads = static_cast<uint64_t>(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > kMaxThreads || block.z > 64) throw EmuError("emu: invalid block shape");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw EmuError("emu: invalid grid shape");
  const size_t static_bytes = static_cast<size_t>(__stop_fluid_emu_shared - __start_fluid_emu_shared);
  if (static_bytes > kMaxStaticSmem) throw EmuError("emu: more than 48 KiB of static shared memory");
  const Config cfg = get_config();
  std::mt19937_64 rng(cfg.seed);
  std::vector<unsigned char> dynamic(dynamic_smem_bytes + 16);
  g_stacks.reserve(nthreads);

  BlockRun run;
  run.body = body;
  run.ctx = ctx;
  g_run = &run;
  g_block_dim = block;
  g_grid_dim = grid;
  g_dynamic_smem = dynamic.data();
  struct Reset {
    ~Reset() { g_run = nullptr, g_thread = nullptr, g_dynamic_smem = nullptr; }
  } reset;
  const int n = static_cast<int>(nthreads);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        g_block_idx = Dim3(bx, by, bz);
        poison_shared(dynamic_smem_bytes, dynamic);
        run.fibers.assign(n, Fiber{});
        run.warps.assign((n + 31) / 32, Warp{});
        for (int w = 0; w < static_cast<int>(run.warps.size()); ++w)
          run.warps[w].size = std::min(32, n - 32 * w);
        run.at_barrier = run.done = 0;
        for (int t = 0; t < n; ++t) {
          Fiber& f = run.fibers[t];
          f.ts.linear = t;
          f.ts.thread_idx = Dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
          std::memcpy(g_stacks.get(t), &kStackCanary, sizeof(kStackCanary));
          fiber_init(&f.ctx, g_stacks.get(t), kStackBytes, &fiber_main, &f);
        }
        run_block(run, rng, cfg.order);
        check_stacks(nthreads);
      }
}

}  // namespace emu
}  // namespace fluid_rt
