// CPU kernels of the commit family: a plain loop over rows (each row is a few dozen integer ops;
// OpenMP only pays off for large batches). Semantics and row guards: params.h / DEVELOPERS.md.
#include "commit/params.h"

namespace fluid_rt {
namespace {

// Below this many rows a parallel region costs more than the work.
constexpr int64_t kParallelRows = 512;

}  // namespace

void draft_commit_row(const DraftCommitParams& p, int64_t b) {
  if (!p.drafting[b]) return;
  const int64_t K = p.horizon[b];
  const int64_t s = p.step[b];
  if (!draft_row_in_range(K, p.kmax, s)) {
    p.drafting[b] = false;  // guard: never index out of range, and let the decode loop end
    return;
  }
  int64_t* block = p.block + b * p.kmax;
  const int64_t* pred = p.pred + b * p.kmax;
  const float* score = p.score + b * p.kmax;

  block[s] = pred[s];   // the left-most open position is always committed
  int64_t run_end = K;  // first j > s that is not confident: the new step (= s + 1 + jump)
  for (int64_t j = s + 1; j < K; ++j) {
    if (draft_confident(score[j], p.threshold[b], p.score_is_entropy)) {
      block[j] = pred[j];  // written even when not contiguous with s
    } else if (run_end == K) {
      run_end = j;
    }
  }
  bool has_mask = false;
  for (int64_t j = 0; j < K; ++j) has_mask |= block[j] == p.mask_token_id;
  p.step[b] = static_cast<int32_t>(run_end);
  // The spec's draft loop also ends when s reaches K (only possible with a MASK left if the model
  // predicted the MASK id itself); keeping drafting set there would hand us step == K next time.
  p.drafting[b] = has_mask && run_end < K;
}

void verify_commit_row(const VerifyCommitParams& p, int64_t b) {
  if (!p.verifying[b] || p.done[b]) return;
  const int64_t K = p.horizon[b];
  const int64_t len0 = p.out_len[b];
  const int64_t budget = p.budget[b];
  if (!verify_row_in_range(K, p.kmax, len0, budget, p.out_stride)) {
    finish_out_of_range_verify_row(p, b);  // guard: finish the row without writing tokens
    return;
  }
  const int64_t* block = p.block + b * p.kmax;
  const int64_t* pred = p.pred + b * p.kmax;

  int64_t f = K;  // first mismatch, K when none
  if (p.remask[b]) {
    for (int64_t j = 0; j < K; ++j) {
      if (block[j] != pred[j]) {
        f = j;
        break;
      }
    }
  }
  const int64_t count = f < K ? f + 1 : K;  // block[:f] + [pred[f]], or block[:K]
  auto token = [&](int64_t i) { return i < f ? block[i] : pred[i]; };

  int64_t len = len0;
  bool finished = false;
  int64_t* out = p.out_tokens + b * p.out_stride;
  for (int64_t i = 0; i < count; ++i) {
    if (len >= budget) break;
    const int64_t t = token(i);
    out[len++] = t;
    if (is_eos_token(p.eos_ids + b * p.num_eos, p.num_eos, t)) {
      finished = true;  // keep the EOS itself, drop the rest of the block
      break;
    }
  }
  finished |= len >= budget;

  p.out_len[b] = static_cast<int32_t>(len);
  p.pending[b] = token(count - 1);
  if (!finished) p.cache_seqlens[b] += static_cast<int32_t>(count);
  if (finished) p.done[b] = true;
  p.committed[b] = static_cast<int32_t>(count);
  p.mismatch[b] = f < K ? static_cast<int32_t>(f) : -1;
  p.verifying[b] = false;
}

void draft_commit_cpu(const DraftCommitParams& p) {
#pragma omp parallel for schedule(static) if (p.batch >= kParallelRows)
  for (int64_t b = 0; b < p.batch; ++b) draft_commit_row(p, b);
}

void verify_commit_cpu(const VerifyCommitParams& p) {
#pragma omp parallel for schedule(static) if (p.batch >= kParallelRows)
  for (int64_t b = 0; b < p.batch; ++b) verify_commit_row(p, b);
}

}  // namespace fluid_rt
