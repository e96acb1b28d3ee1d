// causal_attention: the plain description of one call, shared by the CPU and CUDA kernels.
// No torch headers: bindings/attention.cpp fills this from tensors after checking them.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/host_device.h"  // FLUID_RT_HD: the small helpers below serve the host and the kernels

namespace fluid_rt {

struct CausalAttentionParams {
  // q [B, T, Hq, D], strides in elements (the last dim is contiguous).
  const void* q = nullptr;
  int64_t q_stride_b = 0, q_stride_t = 0, q_stride_h = 0;
  // Caches [Bc, S_max, Hkv, D], contiguous, read (and written when k_new/v_new are given).
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  // cache_seqlens [B] int32: keys already in the cache for query row b (never modified).
  const int32_t* cache_seqlens = nullptr;
  // Optional new keys/values [B, T, Hkv, D] written to cache slots seqlen .. seqlen + T - 1 first.
  const void* k_new = nullptr;
  const void* v_new = nullptr;
  int64_t k_new_stride_b = 0, k_new_stride_t = 0, k_new_stride_h = 0;
  int64_t v_new_stride_b = 0, v_new_stride_t = 0, v_new_stride_h = 0;
  // Optional [B] int32: query row b uses cache row cache_batch_idx[b] (identity when null).
  const int32_t* cache_batch_idx = nullptr;
  // Outputs, contiguous: out [B, T, Hq, D] (q's dtype), lse [B, T, Hq] float32 natural log.
  void* out = nullptr;
  float* lse = nullptr;

  int64_t batch = 0;        // B
  int64_t seqlen_q = 0;     // T
  int64_t heads_q = 0;      // Hq
  int64_t heads_kv = 0;     // Hkv
  int64_t head_dim = 0;     // D
  int64_t cache_batch = 0;  // Bc
  int64_t cache_len = 0;    // S_max
  float softmax_scale = 0.f;
  DType dtype = DType::kFloat32;

  // CUDA split-KV: when num_splits > 1 the partial results of each key range go to
  // partial_out [num_splits, B, T, Hq, D] and partial_lse [num_splits, B, T, Hq] (float32) and a
  // second kernel combines them. Unused on the CPU.
  int num_splits = 1;
  float* partial_out = nullptr;
  float* partial_lse = nullptr;

  FLUID_RT_HD int64_t group() const { return heads_q / heads_kv; }
  // Element offset of (cache row, position, kv head) in the contiguous caches.
  FLUID_RT_HD int64_t cache_offset(int64_t row, int64_t pos, int64_t h) const {
    return ((row * cache_len + pos) * heads_kv + h) * head_dim;
  }
};

// Head sizes the kernels are instantiated for.
inline bool attention_head_dim_supported(int64_t d) {
  return d == 16 || d == 32 || d == 64 || d == 80 || d == 96 || d == 128 || d == 256;
}

// Work is split per (batch row, kv head) over the T * G "rows" (query t, head g of the GQA group,
// row index t * G + g) into tiles of at most max_rows rows, balanced in size. A tile is one CPU task
// or one CUDA block: each K/V tile is loaded once for all of its rows. Shared by the host planner
// and the kernels so both agree.
inline int64_t attention_row_tile(int64_t total_rows, int64_t max_rows) {
  if (total_rows <= max_rows) return total_rows > 0 ? total_rows : 1;
  int64_t tiles = (total_rows + max_rows - 1) / max_rows;
  return (total_rows + tiles - 1) / tiles;
}

// CPU entry point (csrc/attention/cpu.cpp). Expects checked arguments (the binding raises for
// out-of-range seqlens / cache_batch_idx on the CPU).
void causal_attention_cpu(const CausalAttentionParams& p);

}  // namespace fluid_rt
