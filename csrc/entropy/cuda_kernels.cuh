// token_entropy's CUDA kernels and launcher. Compiled by nvcc (cuda.cu) and, as plain C++, by the
// emulation build (csrc/emu, emu.cpp).
//
// Each CTA reduces a range of one row (the whole row, or 1/splits of it when rows are few) to the
// tuple (m, s, t, argmax, first NaN, +inf count, first +inf) with 16-byte loads and float32 math,
// reduced by warp shuffles then across warps in shared memory. With splits > 1 the per-CTA tuples go
// to a workspace and a second kernel (a warp per row) combines them. Nothing is read back on the
// host: non-finite rows are settled on the device by the rules of fluid_rt/ops/entropy.py.
#pragma once
#include <algorithm>
#include <climits>
#include <cstdint>

#include "common/cuda_compat.cuh"
#include "entropy/cuda_plan.h"
#include "entropy/params.h"

namespace fluid_rt {
namespace {

// See cpu.cpp: exp of anything below rounds to 0; max(d, floor) also maps NaN (from -inf - -inf)
// to the floor, so -inf logits weigh exactly 0.
constexpr float kExpFloor = -110.0f;

struct Stats {
  float m;         // max of the finite logits seen (-inf: none)
  float s;         // sum exp((x - m) k)           (0: no finite logit)
  float t;         // sum (x - m) k exp((x - m) k)
  int arg;         // first index of m
  int nan_first;   // first NaN index (INT_MAX: none)
  int pinf_count;  // number of +inf logits
  int pinf_first;  // first +inf index (INT_MAX: none)
  int pad;
};
static_assert(sizeof(Stats) == kEntropyStatsBytes, "Stats is the workspace record");

__device__ __forceinline__ Stats empty_stats() {
  return Stats{-INFINITY, 0.0f, 0.0f, 0, INT_MAX, 0, INT_MAX, 0};
}

__device__ __forceinline__ Stats merge(const Stats& a, const Stats& b, float k) {
  Stats r;
  r.nan_first = min(a.nan_first, b.nan_first);
  r.pinf_count = a.pinf_count + b.pinf_count;
  r.pinf_first = min(a.pinf_first, b.pinf_first);
  r.pad = 0;
  if (b.s == 0.0f) {
    r.m = a.m, r.s = a.s, r.t = a.t, r.arg = a.arg;
  } else if (a.s == 0.0f) {
    r.m = b.m, r.s = b.s, r.t = b.t, r.arg = b.arg;
  } else {
    const float m = fmaxf(a.m, b.m);
    const float da = fmaxf((a.m - m) * k, kExpFloor), db = fmaxf((b.m - m) * k, kExpFloor);
    const float ea = __expf(da), eb = __expf(db);
    r.m = m;
    r.s = a.s * ea + b.s * eb;
    r.t = (a.t + da * a.s) * ea + (b.t + db * b.s) * eb;
    r.arg = a.m > b.m ? a.arg : (b.m > a.m ? b.arg : min(a.arg, b.arg));
  }
  return r;
}

__device__ __forceinline__ Stats shfl_xor(const Stats& v, int lane_mask) {
  Stats o;
  o.m = __shfl_xor_sync(0xffffffffu, v.m, lane_mask);
  o.s = __shfl_xor_sync(0xffffffffu, v.s, lane_mask);
  o.t = __shfl_xor_sync(0xffffffffu, v.t, lane_mask);
  o.arg = __shfl_xor_sync(0xffffffffu, v.arg, lane_mask);
  o.nan_first = __shfl_xor_sync(0xffffffffu, v.nan_first, lane_mask);
  o.pinf_count = __shfl_xor_sync(0xffffffffu, v.pinf_count, lane_mask);
  o.pinf_first = __shfl_xor_sync(0xffffffffu, v.pinf_first, lane_mask);
  o.pad = 0;
  return o;
}

__device__ __forceinline__ Stats warp_reduce(Stats v, float k) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v = merge(v, shfl_xor(v, off), k);
  return v;
}

// Per-thread accumulator. Elements arrive in increasing index order per thread, so the strict
// compare keeps the first index of the max.
struct Acc {
  Stats st;
  float k;

  // n logits x[0..n) at indices idx0 + j (one 16-byte vector or one scalar).
  template <int N>
  __device__ __forceinline__ void add(const float (&x)[N], int idx0) {
    float xs[N];
    float lmax = -INFINITY;
    int larg = 0;
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const bool ordinary = x[j] < INFINITY;  // false for NaN and +inf
      if (!ordinary) {                        // rare
        if (x[j] != x[j]) {
          st.nan_first = min(st.nan_first, idx0 + j);
        } else {
          st.pinf_count += 1;
          st.pinf_first = min(st.pinf_first, idx0 + j);
        }
      }
      xs[j] = ordinary ? x[j] : -INFINITY;
      if (xs[j] > lmax) lmax = xs[j], larg = idx0 + j;
    }
    if (lmax > st.m) {  // the running max grows: rescale (s, t) to the new reference
      const float dm = fmaxf((st.m - lmax) * k, kExpFloor);
      const float e = __expf(dm);
      st.t = (st.t + dm * st.s) * e;
      st.s *= e;
      st.m = lmax;
      st.arg = larg;
    }
#pragma unroll
    for (int j = 0; j < N; ++j) {
      const float d = fmaxf((xs[j] - st.m) * k, kExpFloor);
      const float e = __expf(d);
      st.s += e;
      st.t = fmaf(d, e, st.t);
    }
  }
};

template <typename T>
__device__ __forceinline__ float to_float(T v);
template <>
__device__ __forceinline__ float to_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

__device__ __forceinline__ void finalize(const Stats& st, float k, int64_t r, const TokenEntropyParams& p) {
  float entropy, max_prob, lse;
  int64_t arg;
  if (st.nan_first != INT_MAX) {
    entropy = max_prob = lse = __int_as_float(0x7fc00000), arg = st.nan_first;
  } else if (st.pinf_count > 0) {
    const float c = static_cast<float>(st.pinf_count);
    entropy = logf(c), max_prob = 1.0f / c, lse = INFINITY, arg = st.pinf_first;
  } else if (st.s == 0.0f) {
    entropy = max_prob = __int_as_float(0x7fc00000), lse = -INFINITY, arg = 0;
  } else {
    const float log_s = logf(st.s);
    entropy = fmaxf(log_s - st.t / st.s, 0.0f);
    max_prob = 1.0f / st.s;
    lse = st.m * k + log_s;
    arg = st.arg;
  }
  p.entropy[r] = entropy;
  p.max_prob[r] = max_prob;
  p.logsumexp[r] = lse;
  p.argmax[r] = arg;
}

constexpr int kMaxWarps = 32;

// grid: rows * splits CTAs; CTA b reduces piece (b % splits) of row (b / splits).
template <typename T>
__global__ void token_entropy_kernel(TokenEntropyParams p, int splits, int64_t piece, Stats* partials) {
  constexpr int VEC = 16 / sizeof(T);
  const int64_t r = blockIdx.x / splits;
  const int split = blockIdx.x % splits;
  const int64_t lo = split * piece;
  const int64_t hi = p.vocab < lo + piece ? p.vocab : lo + piece;
  const T* row = static_cast<const T*>(p.logits) + r * p.row_stride;
  Acc acc{empty_stats(), p.inv_temperature};

  if (lo < hi) {
    // Head up to a 16-byte boundary, aligned vectors, tail.
    const uintptr_t addr = reinterpret_cast<uintptr_t>(row + lo);
    int64_t head = static_cast<int64_t>(((16 - (addr & 15)) & 15) / sizeof(T));
    if (addr % sizeof(T) != 0) head = hi - lo;  // cannot happen for torch tensors; stay correct
    if (head > hi - lo) head = hi - lo;
    const int64_t nvec = (hi - lo - head) / VEC;
    const int64_t body = lo + head;
    for (int64_t i = lo + threadIdx.x; i < body; i += blockDim.x) {
      const float x[1] = {to_float(row[i])};
      acc.add(x, static_cast<int>(i));
    }
    const uint4* vrow = reinterpret_cast<const uint4*>(row + body);
    int64_t v = threadIdx.x;
    for (; v + blockDim.x < nvec; v += 2 * blockDim.x) {  // two loads in flight per thread
      const uint4 a = __ldg(vrow + v), b = __ldg(vrow + v + blockDim.x);
      float xa[VEC], xb[VEC];
      const T* ta = reinterpret_cast<const T*>(&a);
      const T* tb = reinterpret_cast<const T*>(&b);
#pragma unroll
      for (int j = 0; j < VEC; ++j) xa[j] = to_float(ta[j]), xb[j] = to_float(tb[j]);
      acc.add(xa, static_cast<int>(body + v * VEC));
      acc.add(xb, static_cast<int>(body + (v + blockDim.x) * VEC));
    }
    for (; v < nvec; v += blockDim.x) {
      const uint4 a = __ldg(vrow + v);
      float xa[VEC];
      const T* ta = reinterpret_cast<const T*>(&a);
#pragma unroll
      for (int j = 0; j < VEC; ++j) xa[j] = to_float(ta[j]);
      acc.add(xa, static_cast<int>(body + v * VEC));
    }
    for (int64_t i = body + nvec * VEC + threadIdx.x; i < hi; i += blockDim.x) {
      const float x[1] = {to_float(row[i])};
      acc.add(x, static_cast<int>(i));
    }
  }

  const float k = p.inv_temperature;
  __shared__ Stats warp_stats[kMaxWarps];
  Stats st = warp_reduce(acc.st, k);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_stats[warp] = st;
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x / 32;
    st = lane < nwarps ? warp_stats[lane] : empty_stats();
    st = warp_reduce(st, k);
    if (lane == 0) {
      if (splits == 1) {
        finalize(st, k, r, p);
      } else {
        partials[blockIdx.x] = st;
      }
    }
  }
}

// One warp per row merges that row's `splits` partials.
__global__ void token_entropy_combine_kernel(TokenEntropyParams p, int splits, const Stats* partials) {
  const int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (r >= p.rows) return;  // whole warps leave together
  const float k = p.inv_temperature;
  Stats st = empty_stats();
  for (int j = lane; j < splits; j += 32) st = merge(st, partials[r * splits + j], k);
  st = warp_reduce(st, k);
  if (lane == 0) finalize(st, k, r, p);
}

// The kernels on `stream` (params.h: launch_token_entropy).
inline int token_entropy_launch(const TokenEntropyParams& p, int splits, void* workspace,
                                cudaStream_t stream) {
  if (p.rows <= 0) return 0;
  splits = std::max(splits, 1);
  const int64_t piece = token_entropy_piece(p.vocab, splits);
  const int threads = token_entropy_threads(piece);
  const dim3 grid(static_cast<unsigned>(p.rows * splits));
  Stats* partials = static_cast<Stats*>(workspace);
  switch (p.dtype) {
    case DType::kFloat32:
      FLUID_RT_LAUNCH(grid, threads, 0, stream, token_entropy_kernel<float>)(p, splits, piece, partials);
      break;
    case DType::kBFloat16:
      FLUID_RT_LAUNCH(grid, threads, 0, stream, token_entropy_kernel<__nv_bfloat16>)(p, splits, piece,
                                                                                     partials);
      break;
    default:
      FLUID_RT_LAUNCH(grid, threads, 0, stream, token_entropy_kernel<__half>)(p, splits, piece, partials);
      break;
  }
  if (splits > 1) {
    constexpr int kRowsPerBlock = 4;
    const unsigned blocks = static_cast<unsigned>((p.rows + kRowsPerBlock - 1) / kRowsPerBlock);
    FLUID_RT_LAUNCH(blocks, 32 * kRowsPerBlock, 0, stream, token_entropy_combine_kernel)(p, splits, partials);
  }
  return static_cast<int>(cudaGetLastError());
}

}  // namespace
}  // namespace fluid_rt
