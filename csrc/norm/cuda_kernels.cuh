// rms_norm's CUDA kernel (+ fused residual add) and launcher: one block per row, float32 math, a
// block-wide sum of squares (warp shuffles, then one value per warp in shared memory). No host sync.
// Compiled by nvcc (cuda.cu) and, as plain C++, by the emulation build (csrc/emu, emu.cpp).
#pragma once
#include "common/cuda_dtype.cuh"
#include "norm/params.h"

namespace fluid_rt {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads) rms_norm_kernel(RmsNormParams p) {
  const int64_t r = blockIdx.x;
  const int64_t H = p.hidden;
  T* x = static_cast<T*>(p.x) + r * H;
  const T* add = p.add ? static_cast<const T*>(p.add) + r * p.add_row_stride : nullptr;
  const T* w = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out) + r * H;

  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < H; i += kThreads) {
    T v = x[i];
    if (add) {
      v = from_float<T>(to_float(v) + to_float(add[i]));  // rounded as torch's add
      x[i] = v;
    }
    const float f = to_float(v);
    ss += f * f;
  }
  __shared__ float warp_sums[kThreads / 32];
  __shared__ float inv_rms;
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float t = threadIdx.x < kThreads / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int o = 16; o > 0; o >>= 1) t += __shfl_xor_sync(0xffffffffu, t, o);
    if (threadIdx.x == 0) inv_rms = rsqrtf(t / static_cast<float>(H) + p.eps);
  }
  __syncthreads();
  const float inv = inv_rms;
  for (int64_t i = threadIdx.x; i < H; i += kThreads) {
    const T normed = from_float<T>(to_float(x[i]) * inv);  // rounded before the weight (HF's order)
    out[i] = from_float<T>(to_float(w[i]) * to_float(normed));
  }
}

template <typename T>
int launch_rms_norm_typed(const RmsNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return 0;
  FLUID_RT_LAUNCH(static_cast<unsigned>(p.rows), kThreads, 0, stream, rms_norm_kernel<T>)(p);
  return static_cast<int>(cudaGetLastError());
}

// The kernel on `stream` (params.h: launch_rms_norm).
inline int rms_norm_launch(const RmsNormParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_rms_norm_typed<float>(p, stream);
    case DType::kBFloat16: return launch_rms_norm_typed<__nv_bfloat16>(p, stream);
    default: return launch_rms_norm_typed<__half>(p, stream);
  }
}

}  // namespace
}  // namespace fluid_rt
