// causal_attention on CUDA: the host-side plan (row tiles, split-KV), shared by the launcher
// (cuda_kernels.cuh), the binding and the emulation build. Torch-free and CUDA-free.
#pragma once
#include <algorithm>
#include <cstdint>

#include "attention/params.h"

namespace fluid_rt {

// Keys per shared-memory tile (one per lane of a warp in the score step).
constexpr int kCudaKeyTile = 32;

// Keys per chunk: a row's keys are folded in chunks [c * kCudaChunkKeys, (c + 1) * kCudaChunkKeys),
// each from a fresh (max, denominator, output), merged in chunk order. The boundaries depend on key
// positions only (the CPU kernel's rule too), never on the batch, the width or the split count, so
// a row's output is bitwise the same in every call that holds it. A split-KV block takes one chunk.
constexpr int64_t kCudaChunkKeys = 256;
static_assert(kCudaChunkKeys % kCudaKeyTile == 0, "chunks hold whole key tiles");

// Rows (query x head of a GQA group) one block takes: bounded by the fp32 Q tile in shared memory.
inline int64_t causal_attention_cuda_max_rows(int64_t head_dim) { return head_dim > 128 ? 32 : 64; }

inline int64_t causal_attention_cuda_row_tiles(const CausalAttentionParams& p) {
  const int64_t total = p.seqlen_q * p.group();
  const int64_t tile = attention_row_tile(total, causal_attention_cuda_max_rows(p.head_dim));
  return (total + tile - 1) / tile;
}

// Chunks a cache of capacity S_max can hold.
inline int64_t causal_attention_cuda_chunks(int64_t cache_len) {
  return std::max<int64_t>(1, (cache_len + kCudaChunkKeys - 1) / kCudaChunkKeys);
}

// Split-KV (flash-decoding): when the (row, kv head, row tile) blocks cannot fill the GPU twice over,
// every chunk of the capacity gets its own block (grid z), and a second kernel merges the partial
// outputs of a row's live chunks in chunk order. The grid only depends on host-known sizes, so the
// launch is graph-safe; the work follows each row's live length on the device: blocks whose chunk
// starts past their rows' last key return at once, and the merge stops at the row's last chunk.
// Returns the grid's z size (1: no split), 0 < z <= 65535, the workspace bounded by kMaxWorkspace.
inline int causal_attention_cuda_num_splits(const CausalAttentionParams& p, int num_sms) {
  constexpr int64_t kMaxWorkspaceBytes = int64_t{256} << 20;
  const int64_t blocks = p.batch * p.heads_kv * causal_attention_cuda_row_tiles(p);
  const int64_t chunks = causal_attention_cuda_chunks(p.cache_len);
  if (blocks <= 0 || blocks >= 2 * static_cast<int64_t>(num_sms) || chunks <= 1 || chunks > 65535) return 1;
  const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
  if (chunks * rows * (p.head_dim + 1) * int64_t{4} > kMaxWorkspaceBytes) return 1;
  return static_cast<int>(chunks);
}

}  // namespace fluid_rt
