// causal_attention on CUDA, flash-decoding style.
//
// 1. append_kv_kernel copies the new keys/values into the caches (same stream, so it is ordered
//    before the attention).
// 2. attention_kernel: one block per (batch row, kv head, tile of the T * G rows of its GQA group,
//    key split). The block keeps its query rows (fp32, prescaled into the log2 domain) in shared
//    memory and walks its key range in tiles of kCudaKeyTile keys that every warp shares: per row a
//    warp scores one key per lane, updates the online softmax (running max m, denominator l) and
//    accumulates P @ V in registers (lane owns dims lane, lane + 32, ...). All math is fp32.
// 3. combine_kernel (split-KV only) merges the per-split normalised outputs by their lse.
// Rows whose cache_seqlens / cache_batch_idx are out of range get NaN out/lse and no cache write:
// the host never reads device values.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>

#include "common/cuda_dtype.cuh"
#include "attention/cuda_launch.h"

namespace fluid_rt {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;


__device__ __forceinline__ float nan_f() { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ float neg_inf_f() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float warp_max(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}
__device__ __forceinline__ float warp_sum(float x) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;
}

// The cache row of query row b, or -1 when its length or index is out of range.
__device__ __forceinline__ int64_t checked_cache_row(const CausalAttentionParams& p, int64_t b, int64_t* seqlen) {
  const int64_t len = p.cache_seqlens[b];
  const int64_t row = p.cache_batch_idx ? static_cast<int64_t>(p.cache_batch_idx[b]) : b;
  *seqlen = len;
  if (len < 0 || len + p.seqlen_q > p.cache_len || row < 0 || row >= p.cache_batch) return -1;
  return row;
}

template <typename T>
__global__ void append_kv_kernel(CausalAttentionParams p) {
  const int64_t D = p.head_dim;
  const int64_t total = p.batch * p.seqlen_q * p.heads_kv * D;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t d = e % D, h = (e / D) % p.heads_kv, t = (e / (D * p.heads_kv)) % p.seqlen_q;
    const int64_t b = e / (D * p.heads_kv * p.seqlen_q);
    int64_t seqlen;
    const int64_t row = checked_cache_row(p, b, &seqlen);
    if (row < 0) continue;
    const int64_t dst = p.cache_offset(row, seqlen + t, h) + d;
    static_cast<T*>(p.k_cache)[dst] =
        static_cast<const T*>(p.k_new)[b * p.k_new_stride_b + t * p.k_new_stride_t + h * p.k_new_stride_h + d];
    static_cast<T*>(p.v_cache)[dst] =
        static_cast<const T*>(p.v_new)[b * p.v_new_stride_b + t * p.v_new_stride_t + h * p.v_new_stride_h + d];
  }
}

// Shared memory: Q [ROWS][D], K [kCudaKeyTile][D + 1] (padded: lane j reads row j without bank
// conflicts), V [kCudaKeyTile][D], all fp32.
template <int D, int ROWS>
constexpr size_t attention_smem_bytes() {
  return sizeof(float) * (ROWS * D + kCudaKeyTile * (D + 1) + kCudaKeyTile * D);
}

template <typename T, int D, int ROWS>
__global__ void __launch_bounds__(kThreads) attention_kernel(CausalAttentionParams p, int64_t row_tile,
                                                             int64_t row_tiles, int64_t split_len) {
  constexpr int KT = kCudaKeyTile;
  constexpr int RPW = ROWS / kWarps;     // rows per warp
  constexpr int DPL = (D + 31) / 32;     // dims per lane
  extern __shared__ float smem[];
  float* Qs = smem;
  float* Ks = Qs + ROWS * D;
  float* Vs = Ks + KT * (D + 1);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tile = blockIdx.x % row_tiles;
  const int64_t bh = blockIdx.x / row_tiles;
  const int64_t b = bh / p.heads_kv, h = bh % p.heads_kv;
  const int split = blockIdx.z;
  const int64_t G = p.group();
  const int64_t total_rows = p.seqlen_q * G;
  const int64_t r0 = tile * row_tile;
  const int64_t r1 = min(total_rows, r0 + row_tile);
  const int rows = static_cast<int>(r1 - r0);
  const bool split_mode = p.num_splits > 1;

  int64_t seqlen;
  const int64_t cache_row = checked_cache_row(p, b, &seqlen);
  if (cache_row < 0) {
    // Out-of-range length or cache row: NaN (the combine kernel does it in split mode).
    if (!split_mode) {
      for (int e = threadIdx.x; e < rows * D; e += kThreads) {
        const int64_t r = r0 + e / D;
        const int64_t out_row = (b * p.seqlen_q + r / G) * p.heads_q + h * G + r % G;
        static_cast<T*>(p.out)[out_row * D + e % D] = from_float<T>(nan_f());
        if (e % D == 0) p.lse[out_row] = nan_f();
      }
    }
    return;
  }

  const float q_scale = p.softmax_scale * kLog2e;
  for (int e = threadIdx.x; e < rows * D; e += kThreads) {
    const int i = e / D, d = e % D;
    const int64_t r = r0 + i;
    const T* src = static_cast<const T*>(p.q) + b * p.q_stride_b + (r / G) * p.q_stride_t + (h * G + r % G) * p.q_stride_h;
    Qs[i * D + d] = to_float(src[d]) * q_scale;
  }

  const int64_t key_end = seqlen + (r1 - 1) / G + 1;
  const int64_t k_begin = static_cast<int64_t>(split) * split_len;
  const int64_t k_stop = min(key_end, k_begin + split_len);

  float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    m[rr] = neg_inf_f();
    l[rr] = 0.f;
#pragma unroll
    for (int c = 0; c < DPL; ++c) acc[rr][c] = 0.f;
  }

  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  for (int64_t j0 = k_begin; j0 < k_stop; j0 += KT) {
    const int n = static_cast<int>(min(static_cast<int64_t>(KT), k_stop - j0));
    __syncthreads();  // previous tile fully consumed (and Q written on the first pass)
    for (int e = threadIdx.x; e < KT * D; e += kThreads) {
      const int j = e / D, d = e % D;
      float kv = 0.f, vv = 0.f;
      if (j < n) {
        const int64_t off = p.cache_offset(cache_row, j0 + j, h) + d;
        kv = to_float(kc[off]);
        vv = to_float(vc[off]);
      }
      Ks[j * (D + 1) + d] = kv;
      Vs[j * D + d] = vv;
    }
    __syncthreads();

#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      const int i = warp + rr * kWarps;
      if (i >= rows) continue;  // warp-uniform
      const int64_t lim = seqlen + (r0 + i) / G + 1;  // keys < lim are visible to this row
      if (lim <= j0) continue;
      float s = neg_inf_f();
      if (lane < n && j0 + lane < lim) {
        const float* qrow = Qs + i * D;
        const float* krow = Ks + lane * (D + 1);
        float dot = 0.f;
#pragma unroll 16
        for (int d = 0; d < D; ++d) dot = fmaf(qrow[d], krow[d], dot);
        s = dot;
      }
      const float m_new = fmaxf(m[rr], warp_max(s));  // finite: key j0 is visible (lim > j0)
      const float pj = s == neg_inf_f() ? 0.f : exp2f(s - m_new);
      const float alpha = exp2f(m[rr] - m_new);  // 0 while m = -inf
      l[rr] = l[rr] * alpha + warp_sum(pj);
      m[rr] = m_new;
#pragma unroll
      for (int c = 0; c < DPL; ++c) acc[rr][c] *= alpha;
      for (int jj = 0; jj < n; ++jj) {
        const float pb = __shfl_sync(0xffffffffu, pj, jj);
#pragma unroll
        for (int c = 0; c < DPL; ++c) {
          const int d = lane + 32 * c;
          if (D % 32 == 0 || d < D) acc[rr][c] = fmaf(pb, Vs[jj * D + d], acc[rr][c]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    const int i = warp + rr * kWarps;
    if (i >= rows) continue;
    const int64_t r = r0 + i;
    const int64_t out_row = (b * p.seqlen_q + r / G) * p.heads_q + h * G + r % G;
    const float inv = l[rr] > 0.f ? 1.f / l[rr] : 0.f;
    const float lse = l[rr] > 0.f ? (m[rr] + log2f(l[rr])) * kLn2 : neg_inf_f();
    if (split_mode) {
      const int64_t rows_all = p.batch * p.seqlen_q * p.heads_q;
      float* po = p.partial_out + (split * rows_all + out_row) * D;
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int d = lane + 32 * c;
        if (D % 32 == 0 || d < D) po[d] = acc[rr][c] * inv;
      }
      if (lane == 0) p.partial_lse[split * rows_all + out_row] = lse;
    } else {
      T* o = static_cast<T*>(p.out) + out_row * D;
#pragma unroll
      for (int c = 0; c < DPL; ++c) {
        const int d = lane + 32 * c;
        if (D % 32 == 0 || d < D) o[d] = from_float<T>(acc[rr][c] * inv);
      }
      if (lane == 0) p.lse[out_row] = lse;
    }
  }
}

// One block per output row (b, t, query head): out = sum_s w_s o_s / sum_s w_s with w_s = exp(lse_s - max).
template <typename T>
__global__ void combine_kernel(CausalAttentionParams p) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / (p.seqlen_q * p.heads_q);
  const int64_t D = p.head_dim;
  const int64_t rows_all = p.batch * p.seqlen_q * p.heads_q;
  int64_t seqlen;
  if (checked_cache_row(p, b, &seqlen) < 0) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) static_cast<T*>(p.out)[row * D + d] = from_float<T>(nan_f());
    if (threadIdx.x == 0) p.lse[row] = nan_f();
    return;
  }
  float mx = neg_inf_f();
  for (int s = 0; s < p.num_splits; ++s) mx = fmaxf(mx, p.partial_lse[s * rows_all + row]);
  float denom = 0.f;
  for (int s = 0; s < p.num_splits; ++s) denom += __expf(p.partial_lse[s * rows_all + row] - mx);
  // Split 0 always holds key 0, so mx is finite and denom >= 1.
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < p.num_splits; ++s) {
      const float ls = p.partial_lse[s * rows_all + row];
      if (ls != neg_inf_f()) o += __expf(ls - mx) * p.partial_out[(s * rows_all + row) * D + d];
    }
    static_cast<T*>(p.out)[row * D + d] = from_float<T>(o / denom);
  }
  if (threadIdx.x == 0) p.lse[row] = mx + logf(denom);
}

template <typename T, int D>
cudaError_t launch_for(const CausalAttentionParams& p, cudaStream_t stream) {
  constexpr int ROWS = D > 128 ? 32 : 64;
  static_assert(ROWS % kWarps == 0, "rows per block must split evenly over the warps");
  if (p.k_new != nullptr) {
    const int64_t total = p.batch * p.seqlen_q * p.heads_kv * p.head_dim;
    const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
    append_kv_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(p);
  }
  const int64_t total_rows = p.seqlen_q * p.group();
  const int64_t row_tile = attention_row_tile(total_rows, causal_attention_cuda_max_rows(D));
  const int64_t row_tiles = (total_rows + row_tile - 1) / row_tile;
  int64_t split_len = (p.cache_len + p.num_splits - 1) / p.num_splits;
  split_len = (split_len + kCudaKeyTile - 1) / kCudaKeyTile * kCudaKeyTile;
  constexpr size_t smem = attention_smem_bytes<D, ROWS>();
  auto kernel = attention_kernel<T, D, ROWS>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.batch * p.heads_kv * row_tiles), 1, static_cast<unsigned>(p.num_splits));
  kernel<<<grid, kThreads, smem, stream>>>(p, row_tile, row_tiles, split_len);
  if (p.num_splits > 1) {
    const int64_t rows_all = p.batch * p.seqlen_q * p.heads_q;
    combine_kernel<T><<<static_cast<unsigned>(rows_all), D >= 128 ? 128 : 64, 0, stream>>>(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_for_type(const CausalAttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 16: return launch_for<T, 16>(p, stream);
    case 32: return launch_for<T, 32>(p, stream);
    case 64: return launch_for<T, 64>(p, stream);
    case 80: return launch_for<T, 80>(p, stream);
    case 96: return launch_for<T, 96>(p, stream);
    case 128: return launch_for<T, 128>(p, stream);
    case 256: return launch_for<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t launch_causal_attention(const CausalAttentionParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_for_type<float>(p, stream);
    case DType::kBFloat16: return launch_for_type<__nv_bfloat16>(p, stream);
    default: return launch_for_type<__half>(p, stream);
  }
}

}  // namespace fluid_rt
