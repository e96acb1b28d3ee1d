// Kernels that test the emulator itself (launchers.h: emu::selftest): a correct block reduction and
// the same one with its barrier dropped, a warp shuffle reduction, an out-of-bounds write and a
// divergent warp operation. tests/test_cuda_emu.py checks that the emulator tells them apart.
#include <cstring>
#include <string>

#include "common/cuda_compat.cuh"
#include "emu/launchers.h"

namespace fluid_rt {
namespace {

constexpr int kBlock = 256;

// Every thread stores its element in shared memory; thread 0 adds them up. Without the barrier,
// thread 0 reads whatever the others have stored by the time it runs: all of it when threads run
// in order, the poison (NaN) when they run in reverse.
__global__ void block_sum_kernel(const float* x, int n, float* out, bool barrier) {
  __shared__ float vals[kBlock];
  const int t = threadIdx.x;
  vals[t] = t < n ? x[t] : 0.f;
  if (barrier) __syncthreads();
  if (t == 0) {
    float s = 0.f;
    for (int i = 0; i < kBlock; ++i) s += vals[i];
    out[0] = s;
  }
}

__global__ void warp_sum_kernel(const float* x, float* out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  float v = x[t];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  out[t] = v;
}

__global__ void overrun_kernel(float* out, int n) {
  for (int i = threadIdx.x; i <= n; i += blockDim.x) out[i] = 1.f;  // <= : one element too many
}

__global__ void divergent_kernel(const float* x, float* out) {
  const int lane = threadIdx.x % 32;
  float v = x[lane];
  if (lane != 0) v = __shfl_sync(0xffffffffu, v, 0);
  out[lane] = v;
}

}  // namespace

namespace emu {

void selftest(const char* what, const float* x, int64_t n, float* out, bool drop_barrier) {
  const std::string w = what;
  if (w == "block_sum") {
    FLUID_RT_LAUNCH(1, kBlock, 0, nullptr, block_sum_kernel)(x, static_cast<int>(n), out, !drop_barrier);
  } else if (w == "warp_sum") {
    FLUID_RT_LAUNCH(static_cast<unsigned>(n / 32), 32, 0, nullptr, warp_sum_kernel)(x, out);
  } else if (w == "overrun") {
    FLUID_RT_LAUNCH(1, 64, 0, nullptr, overrun_kernel)(out, static_cast<int>(n));
  } else if (w == "divergent") {
    FLUID_RT_LAUNCH(1, 32, 0, nullptr, divergent_kernel)(x, out);
  } else {
    throw EmuError("emu: unknown selftest '" + w + "'");
  }
}

}  // namespace emu
}  // namespace fluid_rt
