// causal_attention's CUDA kernels and their launcher, flash-decoding style. Compiled by nvcc
// (cuda.cu) and, as plain C++, by the emulation build (csrc/emu, emu.cpp): the same source runs in
// CI without a GPU.
//
// 1. append_kv_kernel copies the new keys/values into the caches (same stream, so it is ordered
//    before the attention).
// 2. attention_kernel: one block per (batch row, kv head, tile of the T * G rows of its GQA group)
//    and, in split-KV mode, per key chunk. The block keeps its query rows (fp32, prescaled into the
//    log2 domain) in shared memory and walks its keys in tiles of kCudaKeyTile keys that every warp
//    shares: per row a warp scores one key per lane, updates the online softmax (running max m,
//    denominator l) and accumulates P @ V in registers (lane owns dims lane, lane + 32, ...), over
//    the visible keys only (a masked key never enters P @ V: 0 * inf would be NaN). Keys are folded
//    in chunks of kCudaChunkKeys (cuda_plan.h), each from a fresh (m, l, acc) turned into
//    (lse, output); without split-KV the block merges its chunks in order itself, with split-KV each
//    block writes its chunk's partial result. All math is fp32.
// 3. combine_kernel (split-KV only) merges a row's live chunks in order, with the very operations
//    the single-block path uses (merge_chunk), so both paths give the same bits: a row's result
//    does not depend on the batch, the width or whether the launch split its keys.
// Rows whose cache_seqlens / cache_batch_idx are out of range get NaN out/lse and no cache write:
// the host never reads device values.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "attention/cuda_plan.h"
#include "common/cuda_dtype.cuh"

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
__device__ __forceinline__ int64_t checked_cache_row(const CausalAttentionParams& p, int64_t b,
                                                     int64_t* seqlen) {
  const int64_t len = p.cache_seqlens[b];
  const int64_t row = p.cache_batch_idx ? static_cast<int64_t>(p.cache_batch_idx[b]) : b;
  *seqlen = len;
  if (len < 0 || len + p.seqlen_q > p.cache_len || row < 0 || row >= p.cache_batch) return -1;
  return row;
}

// --- chunk results and their merge (shared by attention_kernel and combine_kernel) -------------
// Explicitly rounded operations: the compiler may not contract them into FMAs differently in the
// two kernels. lse values are in the log2 domain (scores were prescaled by log2 e).
struct ChunkResult {
  float lse2;  // -inf: the row sees no key of the chunk
  float inv;   // 1 / l (0 when no key)
};
__device__ __forceinline__ ChunkResult finish_chunk(float m, float l) {
  if (!(l > 0.f)) return ChunkResult{neg_inf_f(), 0.f};
  return ChunkResult{__fadd_rn(m, log2f(l)), __fdiv_rn(1.f, l)};
}
__device__ __forceinline__ float chunk_output(float acc, const ChunkResult& c) {
  return __fmul_rn(acc, c.inv);
}

struct MergeWeights {
  float run, chunk, lse2;
};
// Weights of the running result (lse run_lse2) and a chunk's (lse chunk_lse2, finite).
__device__ __forceinline__ MergeWeights merge_weights(float run_lse2, float chunk_lse2) {
  if (run_lse2 == neg_inf_f()) return MergeWeights{0.f, 1.f, chunk_lse2};
  const float m = fmaxf(run_lse2, chunk_lse2);
  const float a = exp2f(__fadd_rn(run_lse2, -m)), b = exp2f(__fadd_rn(chunk_lse2, -m));
  const float s = __fadd_rn(a, b);
  return MergeWeights{__fdiv_rn(a, s), __fdiv_rn(b, s), __fadd_rn(m, log2f(s))};
}
__device__ __forceinline__ float merge_chunk(float run, float chunk_out, const MergeWeights& w) {
  return __fadd_rn(__fmul_rn(run, w.run), __fmul_rn(chunk_out, w.chunk));
}
__device__ __forceinline__ float natural_lse(float lse2) { return __fmul_rn(lse2, kLn2); }

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
    static_cast<T*>(p.k_cache)[dst] = static_cast<const T*>(
        p.k_new)[b * p.k_new_stride_b + t * p.k_new_stride_t + h * p.k_new_stride_h + d];
    static_cast<T*>(p.v_cache)[dst] = static_cast<const T*>(
        p.v_new)[b * p.v_new_stride_b + t * p.v_new_stride_t + h * p.v_new_stride_h + d];
  }
}

// Shared memory: Q [ROWS][D], K [kCudaKeyTile][D + 1] (padded: lane j reads row j without bank
// conflicts), V [kCudaKeyTile][D], all fp32.
template <int D, int ROWS>
constexpr size_t attention_smem_bytes() {
  return sizeof(float) * (ROWS * D + kCudaKeyTile * (D + 1) + kCudaKeyTile * D);
}

// Index of (row r of the (b, h) group) in the [B, T, Hq] outputs.
__device__ __forceinline__ int64_t output_row(const CausalAttentionParams& p, int64_t b, int64_t h,
                                              int64_t r) {
  const int64_t G = p.group();
  return (b * p.seqlen_q + r / G) * p.heads_q + h * G + r % G;
}

// Loads key/value tile [j0, j0 + n) of (cache_row, h) into shared memory, zeros past n.
template <typename T, int D>
__device__ __forceinline__ void load_kv_tile(const CausalAttentionParams& p, int64_t cache_row, int64_t h,
                                             int64_t j0, int n, float* Ks, float* Vs) {
  const T* kc = static_cast<const T*>(p.k_cache);
  const T* vc = static_cast<const T*>(p.v_cache);
  for (int e = threadIdx.x; e < kCudaKeyTile * D; e += kThreads) {
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
}

// One row's online-softmax step over a loaded tile of n keys at j0, of which keys < lim are visible
// (lim > j0). Runs on the whole warp (lane = key in the score step, lane = dims in P @ V).
template <int D, int DPL>
__device__ __forceinline__ void row_tile_step(const float* qrow, const float* Ks, const float* Vs, int64_t j0,
                                              int n, int64_t lim, int lane, float& m, float& l,
                                              float (&acc)[DPL]) {
  float s = neg_inf_f();
  if (lane < n && j0 + lane < lim) {
    const float* krow = Ks + lane * (D + 1);
    float dot = 0.f;
#pragma unroll 16
    for (int d = 0; d < D; ++d) dot = fmaf(qrow[d], krow[d], dot);
    s = dot;
  }
  const float m_new = fmaxf(m, warp_max(s));  // finite: key j0 is visible (lim > j0)
  const float pj = s == neg_inf_f() ? 0.f : exp2f(s - m_new);
  const float alpha = exp2f(m - m_new);  // 0 while m = -inf
  l = l * alpha + warp_sum(pj);
  m = m_new;
#pragma unroll
  for (int c = 0; c < DPL; ++c) acc[c] *= alpha;
  // Only the visible keys: a masked key's weight is 0, but 0 * inf (an overflowed fp16 V) is NaN.
  const int visible = static_cast<int>(min(static_cast<int64_t>(n), lim - j0));
  for (int jj = 0; jj < visible; ++jj) {
    const float pb = __shfl_sync(0xffffffffu, pj, jj);
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (D % 32 == 0 || d < D) acc[c] = fmaf(pb, Vs[jj * D + d], acc[c]);
    }
  }
}

// Out-of-range length or cache row: NaN outputs (the combine kernel writes them in split mode).
template <typename T, int D>
__device__ void write_nan_rows(const CausalAttentionParams& p, int64_t b, int64_t h, int64_t r0, int rows) {
  for (int e = threadIdx.x; e < rows * D; e += kThreads) {
    const int64_t out_row = output_row(p, b, h, r0 + e / D);
    static_cast<T*>(p.out)[out_row * D + e % D] = from_float<T>(nan_f());
    if (e % D == 0) p.lse[out_row] = nan_f();
  }
}

template <typename T, int D, int ROWS>
__global__ void __launch_bounds__(kThreads)
    attention_kernel(CausalAttentionParams p, int64_t row_tile, int64_t row_tiles) {
  constexpr int KT = kCudaKeyTile;
  constexpr int RPW = ROWS / kWarps;  // rows per warp
  constexpr int DPL = (D + 31) / 32;  // dims per lane
  FLUID_RT_DYNAMIC_SHARED(float, smem);
  float* Qs = smem;
  float* Ks = Qs + ROWS * D;
  float* Vs = Ks + KT * (D + 1);

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t tile = blockIdx.x % row_tiles;
  const int64_t bh = blockIdx.x / row_tiles;
  const int64_t b = bh / p.heads_kv, h = bh % p.heads_kv;
  const int64_t G = p.group();
  const int64_t r0 = tile * row_tile;
  const int64_t r1 = min(p.seqlen_q * G, r0 + row_tile);
  const int rows = static_cast<int>(r1 - r0);
  const bool split_mode = p.num_splits > 1;

  int64_t seqlen;
  const int64_t cache_row = checked_cache_row(p, b, &seqlen);
  if (cache_row < 0) {
    if (!split_mode) write_nan_rows<T, D>(p, b, h, r0, rows);
    return;
  }
  const int64_t key_end = seqlen + (r1 - 1) / G + 1;  // keys of the tile's last row
  const int64_t chunk_begin = split_mode ? static_cast<int64_t>(blockIdx.z) : 0;
  const int64_t chunk_end = split_mode ? chunk_begin + 1 : (key_end + kCudaChunkKeys - 1) / kCudaChunkKeys;
  if (chunk_begin * kCudaChunkKeys >= key_end) return;  // a split past this tile's live keys: no work

  const float q_scale = p.softmax_scale * kLog2e;
  for (int e = threadIdx.x; e < rows * D; e += kThreads) {
    const int i = e / D, d = e % D;
    const int64_t r = r0 + i;
    const T* src = static_cast<const T*>(p.q) + b * p.q_stride_b + (r / G) * p.q_stride_t +
                   (h * G + r % G) * p.q_stride_h;
    Qs[i * D + d] = to_float(src[d]) * q_scale;
  }

  float run_lse[RPW], run_out[RPW][DPL];  // chunks merged so far (single-block mode)
#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    run_lse[rr] = neg_inf_f();
#pragma unroll
    for (int c = 0; c < DPL; ++c) run_out[rr][c] = 0.f;
  }

  for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
    const int64_t c0 = chunk * kCudaChunkKeys;
    const int64_t c1 = min(key_end, c0 + kCudaChunkKeys);
    float m[RPW], l[RPW], acc[RPW][DPL];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      m[rr] = neg_inf_f();
      l[rr] = 0.f;
#pragma unroll
      for (int c = 0; c < DPL; ++c) acc[rr][c] = 0.f;
    }
    for (int64_t j0 = c0; j0 < c1; j0 += KT) {
      const int n = static_cast<int>(min(static_cast<int64_t>(KT), c1 - j0));
      __syncthreads();  // previous tile fully consumed (and Q written on the first pass)
      load_kv_tile<T, D>(p, cache_row, h, j0, n, Ks, Vs);
      __syncthreads();
#pragma unroll
      for (int rr = 0; rr < RPW; ++rr) {
        const int i = warp + rr * kWarps;
        if (i >= rows) continue;                        // warp-uniform
        const int64_t lim = seqlen + (r0 + i) / G + 1;  // keys < lim are visible to this row
        if (lim <= j0) continue;
        row_tile_step<D, DPL>(Qs + i * D, Ks, Vs, j0, n, lim, lane, m[rr], l[rr], acc[rr]);
      }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
      const int i = warp + rr * kWarps;
      if (i >= rows) continue;
      const ChunkResult cr = finish_chunk(m[rr], l[rr]);
      if (split_mode) {
        const int64_t rows_all = p.batch * p.seqlen_q * p.heads_q;
        const int64_t slot = chunk * rows_all + output_row(p, b, h, r0 + i);
        float* po = p.partial_out + slot * D;
#pragma unroll
        for (int c = 0; c < DPL; ++c) {
          const int d = lane + 32 * c;
          if (D % 32 == 0 || d < D) po[d] = chunk_output(acc[rr][c], cr);
        }
        if (lane == 0) p.partial_lse[slot] = cr.lse2;
      } else if (cr.lse2 != neg_inf_f()) {
        const MergeWeights w = merge_weights(run_lse[rr], cr.lse2);
#pragma unroll
        for (int c = 0; c < DPL; ++c)
          run_out[rr][c] = merge_chunk(run_out[rr][c], chunk_output(acc[rr][c], cr), w);
        run_lse[rr] = w.lse2;
      }
    }
  }
  if (split_mode) return;

#pragma unroll
  for (int rr = 0; rr < RPW; ++rr) {
    const int i = warp + rr * kWarps;
    if (i >= rows) continue;
    const int64_t out_row = output_row(p, b, h, r0 + i);
    T* o = static_cast<T*>(p.out) + out_row * D;
#pragma unroll
    for (int c = 0; c < DPL; ++c) {
      const int d = lane + 32 * c;
      if (D % 32 == 0 || d < D) o[d] = from_float<T>(run_out[rr][c]);
    }
    if (lane == 0) p.lse[out_row] = natural_lse(run_lse[rr]);
  }
}

// One block per output row (b, t, query head): merges the partial results of the chunks the row
// sees (keys 0 .. seqlen + t), in chunk order, as attention_kernel's single-block path does.
template <typename T>
__global__ void combine_kernel(CausalAttentionParams p) {
  const int64_t row = blockIdx.x;
  const int64_t b = row / (p.seqlen_q * p.heads_q);
  const int64_t t = (row / p.heads_q) % p.seqlen_q;
  const int64_t D = p.head_dim;
  const int64_t rows_all = p.batch * p.seqlen_q * p.heads_q;
  int64_t seqlen;
  if (checked_cache_row(p, b, &seqlen) < 0) {
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
      static_cast<T*>(p.out)[row * D + d] = from_float<T>(nan_f());
    if (threadIdx.x == 0) p.lse[row] = nan_f();
    return;
  }
  const int64_t chunks = (seqlen + t + 1 + kCudaChunkKeys - 1) / kCudaChunkKeys;  // those with a visible key
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float run_lse = neg_inf_f(), run = 0.f;
    for (int64_t s = 0; s < chunks; ++s) {
      const float ls = p.partial_lse[s * rows_all + row];
      if (ls == neg_inf_f()) continue;
      const MergeWeights w = merge_weights(run_lse, ls);
      run = merge_chunk(run, p.partial_out[(s * rows_all + row) * D + d], w);
      run_lse = w.lse2;
    }
    static_cast<T*>(p.out)[row * D + d] = from_float<T>(run);
    if (d == 0) p.lse[row] = natural_lse(run_lse);
  }
}

template <typename T, int D>
cudaError_t launch_attention_for(const CausalAttentionParams& p, cudaStream_t stream) {
  constexpr int ROWS = D > 128 ? 32 : 64;
  static_assert(ROWS % kWarps == 0, "rows per block must split evenly over the warps");
  if (p.k_new != nullptr) {
    const int64_t total = p.batch * p.seqlen_q * p.heads_kv * p.head_dim;
    const int64_t blocks = std::min<int64_t>((total + 255) / 256, 65536);
    FLUID_RT_LAUNCH(static_cast<unsigned>(blocks), 256, 0, stream, append_kv_kernel<T>)(p);
  }
  const int64_t total_rows = p.seqlen_q * p.group();
  const int64_t row_tile = attention_row_tile(total_rows, causal_attention_cuda_max_rows(D));
  const int64_t row_tiles = (total_rows + row_tile - 1) / row_tile;
  constexpr size_t smem = attention_smem_bytes<D, ROWS>();
  auto kernel = attention_kernel<T, D, ROWS>;
  cudaError_t err =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (err != cudaSuccess) return err;
  const dim3 grid(static_cast<unsigned>(p.batch * p.heads_kv * row_tiles), 1,
                  static_cast<unsigned>(p.num_splits));
  FLUID_RT_LAUNCH(grid, kThreads, smem, stream, kernel)(p, row_tile, row_tiles);
  if (p.num_splits > 1) {
    const int64_t rows_all = p.batch * p.seqlen_q * p.heads_q;
    FLUID_RT_LAUNCH(static_cast<unsigned>(rows_all), D >= 128 ? 128 : 64, 0, stream, combine_kernel<T>)(p);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_attention_for_type(const CausalAttentionParams& p, cudaStream_t stream) {
  switch (p.head_dim) {
    case 16: return launch_attention_for<T, 16>(p, stream);
    case 32: return launch_attention_for<T, 32>(p, stream);
    case 64: return launch_attention_for<T, 64>(p, stream);
    case 80: return launch_attention_for<T, 80>(p, stream);
    case 96: return launch_attention_for<T, 96>(p, stream);
    case 128: return launch_attention_for<T, 128>(p, stream);
    case 256: return launch_attention_for<T, 256>(p, stream);
    default: return cudaErrorInvalidValue;
  }
}

// The whole op on `stream`: cache append, attention, split combine (cuda_launch.h).
inline cudaError_t causal_attention_launch(const CausalAttentionParams& p, cudaStream_t stream) {
  switch (p.dtype) {
    case DType::kFloat32: return launch_attention_for_type<float>(p, stream);
    case DType::kBFloat16: return launch_attention_for_type<__nv_bfloat16>(p, stream);
    default: return launch_attention_for_type<__half>(p, stream);
  }
}

}  // namespace
}  // namespace fluid_rt
