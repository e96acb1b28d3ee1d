// The commit family: per-sequence bookkeeping of one FLUID draft pass and one verify pass, done
// in place on the device so the decode loop never waits for the host (DEVELOPERS.md, sections
// "draft_commit" and "verify_commit"; steps 2-4 of docs/spec/decoding.md).
//
// All tensors are contiguous: [B, Kmax] matrices have row stride Kmax, out_tokens has row stride N.
// Values only the device knows (horizon, step, out_len, budget) are guarded per row, identically
// on the CPU and the GPU (the binding additionally raises on the CPU before calling in):
//   draft_commit:  a drafting row with K outside [1, Kmax] or step outside [0, K) is not drafted;
//                  its drafting flag is cleared (so a decode loop still terminates), nothing else
//                  is written.
//   verify_commit: a selected row with K outside [1, Kmax], out_len < 0, budget < out_len or
//                  budget > N is finished without committing: done = true, verifying = false,
//                  committed = 0, mismatch = -1; out_tokens, out_len, pending and cache_seqlens
//                  are left as they are.
#pragma once
#include <cstdint>

#include "common/host_device.h"

namespace fluid_rt {

struct DraftCommitParams {
  int64_t* block;          // [B, Kmax] draft block, MASK where not yet filled (updated)
  int32_t* step;           // [B] left-most open position s (updated)
  bool* drafting;          // [B] rows to update; cleared when the draft of a row is complete
  const int64_t* pred;     // [B, Kmax] argmax predicting block position j
  const float* score;      // [B, Kmax] max prob (or entropy) of position j
  const int32_t* horizon;  // [B] K of each row
  int64_t batch;           // B
  int64_t kmax;            // Kmax
  const float* threshold;  // [B] per-row threshold; the comparison is float32, as torch's
  int64_t mask_token_id;
  bool score_is_entropy;  // confident = score < threshold instead of score > threshold
};

struct VerifyCommitParams {
  const int64_t* block;    // [B, Kmax] drafted block
  const int64_t* pred;     // [B, Kmax] verify argmax predicting block position j
  const int32_t* horizon;  // [B]
  bool* verifying;         // [B] rows to commit (with !done); cleared for every committed row
  const int64_t* eos_ids;  // [B, E] EOS ids per row, -1 pads (may be null when E == 0)
  int64_t num_eos;         // E
  const bool* remask;      // [B] false: accept the row's block as drafted (no mismatch search)
  int64_t* out_tokens;     // [B, N] generated tokens
  int64_t out_stride;      // N
  int32_t* out_len;        // [B] tokens in out_tokens
  const int32_t* budget;   // [B] max tokens in out_tokens in all (<= N)
  bool* done;              // [B] set on EOS or when budget is reached
  int64_t* pending;        // [B] last committed token (fed first in the next forward)
  int32_t* cache_seqlens;  // [B] += committed (only for rows that are not done afterwards)
  int32_t* committed;      // [B] tokens committed from the block before EOS/budget cuts
  int32_t* mismatch;       // [B] first mismatch f, or -1
  int64_t batch;           // B
  int64_t kmax;            // Kmax
};

// The per-row guards above, one definition for the CPU and the CUDA kernels.
FLUID_RT_HD inline bool draft_row_in_range(int64_t K, int64_t kmax, int64_t step) {
  return K >= 1 && K <= kmax && step >= 0 && step < K;
}
FLUID_RT_HD inline bool verify_row_in_range(int64_t K, int64_t kmax, int64_t out_len, int64_t budget,
                                            int64_t out_stride) {
  return K >= 1 && K <= kmax && out_len >= 0 && budget >= out_len && budget <= out_stride;
}
// A selected verify row that fails verify_row_in_range is finished without committing.
FLUID_RT_HD inline void finish_out_of_range_verify_row(const VerifyCommitParams& p, int64_t b) {
  p.done[b] = true;
  p.verifying[b] = false;
  p.committed[b] = 0;
  p.mismatch[b] = -1;
}
// Whether `token` is one of a row's `num_eos` EOS ids (eos: that row's ids).
FLUID_RT_HD inline bool is_eos_token(const int64_t* eos, int64_t num_eos, int64_t token) {
  for (int64_t e = 0; e < num_eos; ++e)
    if (eos[e] == token) return true;
  return false;
}
// Whether a draft position's score is confident; NaN never is (both comparisons are false).
FLUID_RT_HD inline bool draft_confident(float score, float threshold, bool score_is_entropy) {
  return score_is_entropy ? score < threshold : score > threshold;
}

void draft_commit_cpu(const DraftCommitParams& p);
void verify_commit_cpu(const VerifyCommitParams& p);
// One row b of each (the CPU decode step, csrc/step, runs them row by row).
void draft_commit_row(const DraftCommitParams& p, int64_t b);
void verify_commit_row(const VerifyCommitParams& p, int64_t b);

}  // namespace fluid_rt

// CUDA launchers (defined in cuda.cu, declared only where cudaStream_t exists).
#if defined(__CUDACC__) || defined(FLUID_RT_WITH_CUDA)
#include <cuda_runtime_api.h>
namespace fluid_rt {
void launch_draft_commit(const DraftCommitParams& p, cudaStream_t stream);
void launch_verify_commit(const VerifyCommitParams& p, cudaStream_t stream);
}  // namespace fluid_rt
#endif
