// draft_commit / verify_commit: the schemas, the argument checks and one impl per op (CPU kernel
// or CUDA launch).
#include "commit.h"

namespace fluid_rt {

DraftCommitParams describe_draft_commit(const at::Tensor& block, const at::Tensor& step,
                                        const at::Tensor& drafting, const at::Tensor& pred,
                                        const at::Tensor& score, const at::Tensor& horizon,
                                        const at::Tensor& threshold, int64_t mask_token_id,
                                        bool score_is_entropy) {
  check_args(kDraftCommitSpec, {block, step, drafting, pred, score, horizon, threshold});
  DraftCommitParams p;
  p.block = block.data_ptr<int64_t>();
  p.step = step.data_ptr<int32_t>();
  p.drafting = drafting.data_ptr<bool>();
  p.pred = pred.data_ptr<int64_t>();
  p.score = score.data_ptr<float>();
  p.horizon = horizon.data_ptr<int32_t>();
  p.batch = block.size(0);
  p.kmax = block.size(1);
  p.threshold = threshold.data_ptr<float>();
  p.mask_token_id = mask_token_id;
  p.score_is_entropy = score_is_entropy;
  return p;
}

VerifyCommitParams describe_verify_commit(const at::Tensor& block, const at::Tensor& pred,
                                          const at::Tensor& horizon, const at::Tensor& verifying,
                                          const at::Tensor& eos_ids, const at::Tensor& remask,
                                          const at::Tensor& out_tokens, const at::Tensor& out_len,
                                          const at::Tensor& budget, const at::Tensor& done,
                                          const at::Tensor& pending, const at::Tensor& cache_seqlens,
                                          const at::Tensor& committed, const at::Tensor& mismatch) {
  check_args(kVerifyCommitSpec, {block, pred, horizon, verifying, eos_ids, remask, out_tokens, out_len,
                                 budget, done, pending, cache_seqlens, committed, mismatch});
  VerifyCommitParams p;
  p.block = block.data_ptr<int64_t>();
  p.pred = pred.data_ptr<int64_t>();
  p.horizon = horizon.data_ptr<int32_t>();
  p.verifying = verifying.data_ptr<bool>();
  p.eos_ids = eos_ids.numel() > 0 ? eos_ids.data_ptr<int64_t>() : nullptr;
  p.num_eos = eos_ids.size(1);
  p.remask = remask.data_ptr<bool>();
  p.out_tokens = out_tokens.numel() > 0 ? out_tokens.data_ptr<int64_t>() : nullptr;
  p.out_stride = out_tokens.size(1);
  p.out_len = out_len.data_ptr<int32_t>();
  p.budget = budget.data_ptr<int32_t>();
  p.done = done.data_ptr<bool>();
  p.pending = pending.data_ptr<int64_t>();
  p.cache_seqlens = cache_seqlens.data_ptr<int32_t>();
  p.committed = committed.data_ptr<int32_t>();
  p.mismatch = mismatch.data_ptr<int32_t>();
  p.batch = block.size(0);
  p.kmax = block.size(1);
  return p;
}

namespace {

// Host-side value checks of the CPU impls: the kernels would only guard these rows (on CUDA the
// guard is all there is, since reading the values would sync).
void check_draft_values(const DraftCommitParams& p) {
  for (int64_t b = 0; b < p.batch; ++b) {
    if (!p.drafting[b]) continue;
    const int64_t K = p.horizon[b], s = p.step[b];
    FLUID_CHECK_VALUE(K >= 1 && K <= p.kmax, "horizon: row ", b, " has K = ", K,
                      ", outside [1, Kmax = ", p.kmax, "]");
    FLUID_CHECK_VALUE(s >= 0 && s < K, "step: row ", b, " has step = ", s, ", outside [0, horizon = ", K,
                      ")");
  }
}

void check_verify_values(const VerifyCommitParams& p) {
  for (int64_t b = 0; b < p.batch; ++b) {
    if (!p.verifying[b] || p.done[b]) continue;
    const int64_t K = p.horizon[b], len = p.out_len[b], bud = p.budget[b];
    FLUID_CHECK_VALUE(K >= 1 && K <= p.kmax, "horizon: row ", b, " has K = ", K,
                      ", outside [1, Kmax = ", p.kmax, "]");
    FLUID_CHECK_VALUE(len >= 0 && len <= bud, "out_len: row ", b, " has out_len = ", len,
                      ", outside [0, budget = ", bud, "]");
    FLUID_CHECK_VALUE(bud <= p.out_stride, "budget: row ", b, " has budget = ", bud, " > N = ", p.out_stride,
                      " (out_tokens dim 1)");
  }
}

void draft_commit_impl(const at::Tensor& block, const at::Tensor& step, const at::Tensor& drafting,
                       const at::Tensor& pred, const at::Tensor& score, const at::Tensor& horizon,
                       const at::Tensor& threshold, int64_t mask_token_id, bool score_is_entropy) {
  const DraftCommitParams p = describe_draft_commit(block, step, drafting, pred, score, horizon, threshold,
                                                    mask_token_id, score_is_entropy);
  const DeviceScope scope(block);
  if (block.is_cpu()) {
    check_draft_values(p);
    draft_commit_cpu(p);
  } else {
#ifdef FLUID_RT_WITH_CUDA
    launch_draft_commit(p, current_stream_for(block));
    check_cuda_launch(cudaGetLastError(), "draft_commit");
#endif
  }
}

void verify_commit_impl(const at::Tensor& block, const at::Tensor& pred, const at::Tensor& horizon,
                        const at::Tensor& verifying, const at::Tensor& eos_ids, const at::Tensor& remask,
                        const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                        const at::Tensor& done, const at::Tensor& pending, const at::Tensor& cache_seqlens,
                        const at::Tensor& committed, const at::Tensor& mismatch) {
  const VerifyCommitParams p =
      describe_verify_commit(block, pred, horizon, verifying, eos_ids, remask, out_tokens, out_len, budget,
                             done, pending, cache_seqlens, committed, mismatch);
  const DeviceScope scope(block);
  if (block.is_cpu()) {
    check_verify_values(p);
    verify_commit_cpu(p);
  } else {
#ifdef FLUID_RT_WITH_CUDA
    launch_verify_commit(p, current_stream_for(block));
    check_cuda_launch(cudaGetLastError(), "verify_commit");
#endif
  }
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def(kDraftCommitSchema);
  m.def(kVerifyCommitSchema);
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("draft_commit", &draft_commit_impl);
  m.impl("verify_commit", &verify_commit_impl);
}
#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) {
  m.impl("draft_commit", &draft_commit_impl);
  m.impl("verify_commit", &verify_commit_impl);
}
#endif

}  // namespace fluid_rt
