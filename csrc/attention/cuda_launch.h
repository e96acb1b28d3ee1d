// causal_attention on CUDA: host-side planning and the launcher (csrc/attention/cuda.cu).
// Torch-free; included by the binding only in CUDA builds.
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

#include "attention/params.h"

namespace fluid_rt {

// Keys per shared-memory tile (one per lane of a warp in the score step).
constexpr int kCudaKeyTile = 32;

// Rows (query x head of a GQA group) one block takes: bounded by the fp32 Q tile in shared memory.
inline int64_t causal_attention_cuda_max_rows(int64_t head_dim) { return head_dim > 128 ? 32 : 64; }

inline int64_t causal_attention_cuda_row_tiles(const CausalAttentionParams& p) {
  const int64_t total = p.seqlen_q * p.group();
  const int64_t tile = attention_row_tile(total, causal_attention_cuda_max_rows(p.head_dim));
  return (total + tile - 1) / tile;
}

// Split-KV (flash-decoding): when the (row, kv head, row tile) blocks cannot fill the GPU twice over,
// each block's key range is cut into num_splits pieces run by separate blocks, and a second kernel
// merges their partial outputs by their log-sum-exp. Only sizes known on the host are used (the
// cache capacity bounds the key range; lengths live on the device).
inline int causal_attention_cuda_num_splits(const CausalAttentionParams& p, int num_sms) {
  const int64_t blocks = p.batch * p.heads_kv * causal_attention_cuda_row_tiles(p);
  const int64_t target = 2 * static_cast<int64_t>(num_sms);
  if (blocks <= 0 || blocks >= target) return 1;
  const int64_t want = (target + blocks - 1) / blocks;
  const int64_t by_keys = std::max<int64_t>(1, p.cache_len / 256);  // at least ~256 keys per split
  return static_cast<int>(std::clamp<int64_t>(std::min(want, by_keys), 1, 64));
}

// Writes k_new/v_new into the caches (when given), then the attention (and the split combine when
// p.num_splits > 1, which needs p.partial_out / p.partial_lse). Asynchronous on `stream`; returns
// the launch error, if any.
cudaError_t launch_causal_attention(const CausalAttentionParams& p, cudaStream_t stream);

}  // namespace fluid_rt
