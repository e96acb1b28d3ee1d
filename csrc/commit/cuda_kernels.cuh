// CUDA kernels of the commit family and their launchers: one warp per row. The row's positions are
// visited in chunks of 32 (one per lane); warp ballots find the end of the confident run (draft)
// and the first mismatch / first EOS (verify) without a serial scan, and the lanes write tokens in
// parallel. Nothing is read back by the host, so both launches are CUDA-graph capturable.
// Semantics and per-row guards (shared with cpu.cpp): params.h / DEVELOPERS.md. Compiled by nvcc
// (cuda.cu) and, as plain C++, by the emulation build (csrc/emu, emu.cpp).
#pragma once
#include "common/cuda_compat.cuh"
#include "commit/params.h"

namespace fluid_rt {
namespace {

constexpr int kWarp = 32;
constexpr int kWarpsPerBlock = 4;
constexpr unsigned kFull = 0xffffffffu;

// Index of the lowest set bit (mask != 0).
__device__ __forceinline__ int lowest(unsigned mask) { return __ffs(mask) - 1; }

__global__ void draft_commit_kernel(DraftCommitParams p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (b >= p.batch || !p.drafting[b]) return;  // uniform per warp
  const int64_t K = p.horizon[b];
  const int64_t s = p.step[b];
  if (!draft_row_in_range(K, p.kmax, s)) {
    if (lane == 0) p.drafting[b] = false;  // guard: see params.h
    return;
  }
  int64_t* block = p.block + b * p.kmax;
  const int64_t* pred = p.pred + b * p.kmax;
  const float* score = p.score + b * p.kmax;

  int64_t run_end = K;  // first non-confident j > s (warp-uniform)
  bool has_mask = false;
  for (int64_t base = 0; base < K; base += kWarp) {
    const int64_t j = base + lane;
    const bool in = j < K;
    bool unsure = false;
    int64_t tok = 0;
    if (in) {
      if (j == s) {
        tok = pred[j];
        block[j] = tok;
      } else if (j > s && draft_confident(score[j], p.threshold[b], p.score_is_entropy)) {
        tok = pred[j];
        block[j] = tok;
      } else {
        unsure = j > s;
        tok = block[j];
      }
    }
    const unsigned m = __ballot_sync(kFull, unsure);
    if (m != 0 && run_end == K) run_end = base + lowest(m);
    has_mask |= in && tok == p.mask_token_id;
  }
  has_mask = __any_sync(kFull, has_mask);
  if (lane == 0) {
    p.step[b] = static_cast<int32_t>(run_end);
    p.drafting[b] = has_mask && run_end < K;
  }
}

__global__ void verify_commit_kernel(VerifyCommitParams p) {
  const int lane = threadIdx.x % kWarp;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarp;
  if (b >= p.batch || !p.verifying[b] || p.done[b]) return;  // uniform per warp
  const int64_t K = p.horizon[b];
  const int64_t len0 = p.out_len[b];
  const int64_t budget = p.budget[b];
  if (!verify_row_in_range(K, p.kmax, len0, budget, p.out_stride)) {
    if (lane == 0) finish_out_of_range_verify_row(p, b);  // guard: see params.h
    return;
  }
  const int64_t* block = p.block + b * p.kmax;
  const int64_t* pred = p.pred + b * p.kmax;

  int64_t f = K;  // first mismatch, K when none
  if (p.remask[b]) {
    for (int64_t base = 0; base < K; base += kWarp) {
      const int64_t j = base + lane;
      const unsigned m = __ballot_sync(kFull, j < K && block[j] != pred[j]);
      if (m != 0) {
        f = base + lowest(m);
        break;
      }
    }
  }
  const int64_t count = f < K ? f + 1 : K;
  const int64_t room = budget - len0;
  // Tokens appended: up to the first EOS (inclusive), at most `room`.
  int64_t first_eos = count;
  for (int64_t base = 0; base < count && base < room; base += kWarp) {
    const int64_t i = base + lane;
    bool eos = false;
    if (i < count) {
      const int64_t t = i < f ? block[i] : pred[i];
      const int64_t* row_eos = p.eos_ids + b * p.num_eos;
      for (int64_t e = 0; e < p.num_eos && !eos; ++e) eos = row_eos[e] == t;
    }
    const unsigned m = __ballot_sync(kFull, eos);
    if (m != 0) {
      first_eos = base + lowest(m);
      break;
    }
  }
  int64_t n_write = count < room ? count : room;
  const bool eos_kept = first_eos < n_write;
  if (eos_kept) n_write = first_eos + 1;
  int64_t* out = p.out_tokens + b * p.out_stride + len0;
  for (int64_t i = lane; i < n_write; i += kWarp) out[i] = i < f ? block[i] : pred[i];
  if (lane == 0) {
    const bool finished = eos_kept || len0 + n_write >= budget;
    p.out_len[b] = static_cast<int32_t>(len0 + n_write);
    p.pending[b] = count - 1 < f ? block[count - 1] : pred[count - 1];
    if (!finished) p.cache_seqlens[b] += static_cast<int32_t>(count);
    if (finished) p.done[b] = true;
    p.committed[b] = static_cast<int32_t>(count);
    p.mismatch[b] = f < K ? static_cast<int32_t>(f) : -1;
    p.verifying[b] = false;
  }
}

unsigned grid_for(int64_t batch) {
  return static_cast<unsigned>((batch + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

// The kernels on `stream` (params.h: launch_draft_commit / launch_verify_commit).
inline void draft_commit_launch(const DraftCommitParams& p, cudaStream_t stream) {
  if (p.batch == 0) return;
  FLUID_RT_LAUNCH(grid_for(p.batch), kWarp * kWarpsPerBlock, 0, stream, draft_commit_kernel)(p);
}

inline void verify_commit_launch(const VerifyCommitParams& p, cudaStream_t stream) {
  if (p.batch == 0) return;
  FLUID_RT_LAUNCH(grid_for(p.batch), kWarp * kWarpsPerBlock, 0, stream, verify_commit_kernel)(p);
}

}  // namespace
}  // namespace fluid_rt
