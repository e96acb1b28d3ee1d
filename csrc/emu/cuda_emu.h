// What a CUDA kernel source needs to compile as plain C++ and run under the emulator
// (csrc/emu/runtime.h says how it runs). Included instead of the CUDA headers by
// csrc/common/cuda_compat.cuh when the translation unit is not compiled by nvcc. Covers what the
// kernels of csrc/*/cuda_kernels.cuh use, no more: qualifiers, thread/block indices, shared memory,
// barriers, warp shuffles/votes, bf16/fp16 types and conversions, the math intrinsics, a launch
// macro and the few runtime API calls of the launchers.
#pragma once
#ifdef __CUDACC__
#error "csrc/emu/cuda_emu.h is for the C++ (emulation) build only"
#endif

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "common/dtype.h"
#include "emu/runtime.h"

#define FLUID_RT_CUDA_EMULATION 1

// --- qualifiers ---------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A function-local static in the section the runtime poisons at every block start (runtime.h).
#define __shared__ __attribute__((section("fluid_emu_shared"), aligned(16))) static
// `extern __shared__ T name[];` has no C++ spelling: kernels declare dynamic shared memory with
// FLUID_RT_DYNAMIC_SHARED(T, name) (common/cuda_compat.cuh), which becomes this pointer.
#define FLUID_RT_EMU_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::fluid_rt::emu::g_dynamic_smem)

// --- indices ------------------------------------------------------------------------------------
#define threadIdx (::fluid_rt::emu::g_thread->thread_idx)
#define blockIdx (::fluid_rt::emu::g_block_idx)
#define blockDim (::fluid_rt::emu::g_block_dim)
#define gridDim (::fluid_rt::emu::g_grid_dim)

namespace fluid_rt {
namespace emu {

// --- element types: storage and round-to-nearest-even conversions of common/dtype.h -------------
struct alignas(2) Bf16 {
  uint16_t bits;
};
struct alignas(2) Half {
  uint16_t bits;
};
inline float bf16_to_f(Bf16 v) { return bf16_to_float(v.bits); }
inline Bf16 f_to_bf16(float f) { return Bf16{float_to_bf16(f)}; }
inline float half_to_f(Half v) { return fp16_to_float(v.bits); }
inline Half f_to_half(float f) { return Half{float_to_fp16(f)}; }

struct alignas(16) U4 {
  unsigned x, y, z, w;
};

// --- warp operations ----------------------------------------------------------------------------
inline int lane_id() { return g_thread->linear % 32; }

template <typename T>
T shfl_from(unsigned mask, T v, int src_lane) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp exchange of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src_lane);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

// --- launches -----------------------------------------------------------------------------------
template <typename... KArgs>
struct Launch {
  void (*kernel)(KArgs...);
  Dim3 grid, block;
  size_t smem;

  template <typename... Args>
  void operator()(Args&&... args) const {
    struct Ctx {
      void (*kernel)(KArgs...);
      std::tuple<std::decay_t<KArgs>...> args;
    } ctx{kernel, std::tuple<std::decay_t<KArgs>...>(std::forward<Args>(args)...)};
    const int limit = max_dynamic_smem(reinterpret_cast<const void*>(kernel));
    if (smem > static_cast<size_t>(limit > 48 * 1024 ? limit : 48 * 1024))
      fail_launch("dynamic shared memory above 48 KiB without cudaFuncSetAttribute, or above its value");
    run_grid(
        grid, block, smem,
        [](void* c) {
          Ctx* x = static_cast<Ctx*>(c);
          std::apply(x->kernel, x->args);  // each thread gets its own copies of the by-value parameters
        },
        &ctx);
  }
  [[noreturn]] static void fail_launch(const char* what) { throw EmuError(what); }
};

template <typename... KArgs>
Launch<KArgs...> make_launch(void (*kernel)(KArgs...), Dim3 grid, Dim3 block, size_t smem) {
  return Launch<KArgs...>{kernel, grid, block, smem};
}

}  // namespace emu

// The CUDA names, visible to kernels written inside namespace fluid_rt (they are not global, so they
// can never clash with a real CUDA header's symbols in a build that links both).
using dim3 = emu::Dim3;
using __nv_bfloat16 = emu::Bf16;
using __half = emu::Half;
using uint4 = emu::U4;
struct CUstream_emu;
using cudaStream_t = CUstream_emu*;
enum cudaError_t : int { cudaSuccess = 0, cudaErrorInvalidValue = 1 };
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

inline cudaError_t cudaGetLastError() { return cudaSuccess; }
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value > 227 * 1024) return cudaErrorInvalidValue;  // sm_90's opt-in limit per block
    emu::set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), value);
  }
  return cudaSuccess;
}
inline const char* cudaGetErrorString(cudaError_t e) {
  return e == cudaSuccess ? "no error" : "invalid value";
}

inline void __syncthreads() { emu::syncthreads(); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask); }
template <typename T>
inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  const int lane = emu::lane_id();
  return emu::shfl_from(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = emu::lane_id();
  const int src = lane ^ lane_mask;
  return emu::shfl_from(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::lane_id();
  const int src = lane + static_cast<int>(delta);
  return emu::shfl_from(
      mask, v, (src & (width - 1)) >= (lane & (width - 1)) && (src / width) == (lane / width) ? src : lane);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const int lane = emu::lane_id();
  const int src = lane - static_cast<int>(delta);
  return emu::shfl_from(mask, v, src >= 0 && src / width == lane / width ? src : lane);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return emu::warp_ballot(mask, pred != 0); }
inline int __any_sync(unsigned mask, int pred) { return (emu::warp_ballot(mask, pred != 0) & mask) != 0; }
inline int __all_sync(unsigned mask, int pred) { return (emu::warp_ballot(mask, pred != 0) & mask) == mask; }

// --- conversions --------------------------------------------------------------------------------
inline float __bfloat162float(__nv_bfloat16 v) { return emu::bf16_to_f(v); }
inline __nv_bfloat16 __float2bfloat16(float f) { return emu::f_to_bf16(f); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return emu::f_to_bf16(f); }
inline float __half2float(__half v) { return emu::half_to_f(v); }
inline __half __float2half(float f) { return emu::f_to_half(f); }
inline __half __float2half_rn(float f) { return emu::f_to_half(f); }

// --- math and bit intrinsics (fast-math ones by the float formula the GPU evaluates) -------------
inline float __int_as_float(int i) {
  float f;
  std::memcpy(&f, &i, sizeof(f));
  return f;
}
inline int __float_as_int(float f) {
  int i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
}
inline float __expf(float x) { return std::exp2(x * 1.4426950408889634f); }  // ex2.approx(x * log2 e)
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline int __ffs(unsigned x) { return x == 0 ? 0 : __builtin_ctz(x) + 1; }
inline int __ffs(int x) { return __ffs(static_cast<unsigned>(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// CUDA's device min/max overloads (mixed integer widths promote, as there).
template <typename A, typename B>
inline std::common_type_t<A, B> min(A a, B b) {
  return b < a ? b : a;
}
template <typename A, typename B>
inline std::common_type_t<A, B> max(A a, B b) {
  return a < b ? b : a;
}

}  // namespace fluid_rt

// <<<grid, block, smem, stream>>> has no C++ spelling: launchers write
// FLUID_RT_LAUNCH(grid, block, smem, stream, kernel)(args...) (common/cuda_compat.cuh).
#define FLUID_RT_EMU_LAUNCH(grid, block, smem, stream, ...) \
  ((void)(stream),                                          \
   ::fluid_rt::emu::make_launch(__VA_ARGS__, ::fluid_rt::dim3(grid), ::fluid_rt::dim3(block), (smem)))
