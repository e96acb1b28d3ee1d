// The CUDA execution-model emulator's runtime (csrc/emu/runtime.cpp): grids, blocks of cooperative
// fibers, barriers and warp exchanges. Torch-free and CUDA-free; kernels reach it through
// csrc/emu/cuda_emu.h, the bindings through csrc/emu/launchers.h.
//
// The model (what a CUDA kernel may rely on, and what a bug in it turns into here):
// * Blocks of a grid run one after another, in blockIdx order (x fastest), on the calling OS thread.
// * The threads of a block are fibers with their own stacks. A fiber runs until it reaches a meeting
//   point (__syncthreads, a warp operation, __syncwarp) or returns. Fibers that are ready run in
//   "rounds", each round in an order set by the schedule: forward (tid 0, 1, ...), reverse, or a
//   fresh seeded random permutation per round. A read of shared memory that another thread writes
//   without a barrier in between therefore sees the written value in one order and the poison in
//   another: results that depend on the schedule reveal a race (the bindings compare them).
// * __syncthreads releases the block when every thread that has not returned reached it (as on
//   sm_70+, threads that returned count as arrived).
// * A warp operation (shuffle, ballot, any/all, __syncwarp) is a meeting point of the 32 lanes of
//   its warp: each lane deposits its value, and when every lane of the warp has arrived they all
//   read. Lanes named in the mask must all arrive: a lane that returned, or lanes waiting at a
//   different kind of operation, make the launch fail ("divergent"), as would a deadlock (no fiber
//   can run while some have not returned).
// * Shared memory, static and dynamic, is filled with 0xFF bytes (NaN in float32/bf16/fp16, -1 in
//   integers) at the start of every block, so a value a block forgets to write is never a stale one.
//
// Static __shared__ variables: cuda_emu.h turns `__shared__ T x[N];` into a function-local `static`
// placed in the linker section "fluid_emu_shared". Fibers of one block run on one OS thread and share
// one copy, which is exactly CUDA's per-block sharing because blocks run one at a time; the runtime
// poisons the whole section (every kernel's shared variables, a few hundred bytes) at block start,
// and one process-wide lock serializes emulated launches, so two OS threads never share it.
// (`static thread_local` would also be one copy per block under that lock, but the runtime could not
// find the variables to poison them.)
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace fluid_rt {
namespace emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr Dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

enum class Order : int { kForward = 0, kReverse = 1, kRandom = 2 };

// Run-time knobs of the emulation. `num_sms` stands for the device's SM count in the host-side
// planners (split-KV, entropy row splits), so small shapes take the multi-CTA paths.
struct Config {
  Order order = Order::kForward;
  uint64_t seed = 1;
  int num_sms = 4;
};
Config get_config();
void set_config(const Config& c);

// A kernel launch failed under emulation (divergent warp op, deadlock, bad launch shape, stack
// overflow, a guard zone overwritten, ...).
struct EmuError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Runs body(ctx) once per thread of every block of the grid. Throws EmuError.
using ThreadBody = void (*)(void* ctx);
void run_grid(Dim3 grid, Dim3 block, size_t dynamic_smem_bytes, ThreadBody body, void* ctx);

// Thread-side state, read by the threadIdx/blockIdx/... macros of cuda_emu.h.
struct ThreadState {
  Dim3 thread_idx;
  int linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
};
extern ThreadState* g_thread;
extern Dim3 g_block_idx, g_block_dim, g_grid_dim;
extern unsigned char* g_dynamic_smem;

// Meeting points (called from inside a kernel).
void syncthreads();
void syncwarp(unsigned mask);
// Each lane gives `value` and receives the value of lane `src_lane` (its own when out of the warp).
uint64_t warp_exchange(unsigned mask, uint64_t value, int src_lane);
// Each lane gives `pred` and receives the mask of lanes whose pred was true.
unsigned warp_ballot(unsigned mask, bool pred);
[[noreturn]] void fail(const std::string& what);

// cudaFuncSetAttribute(MaxDynamicSharedMemorySize) bookkeeping: launches above 48 KiB of dynamic
// shared memory need it first, as on a GPU.
void set_max_dynamic_smem(const void* kernel, int bytes);
int max_dynamic_smem(const void* kernel);

}  // namespace emu
}  // namespace fluid_rt
