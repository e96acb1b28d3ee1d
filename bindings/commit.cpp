// Bindings of the commit family: schemas, the one argument checker per op, CPU and CUDA impls.
// Every argument is mutated or read in place; the ops return nothing.
#include <algorithm>
#include <vector>

#include "commit/params.h"
#include "common.h"

namespace fluid_rt {
namespace {

struct Arg {
  const at::Tensor* t;
  const char* name;
  bool mutated;
};

// All tensors on one supported device, and no mutated tensor sharing memory with any other.
void check_devices_and_overlap(const std::vector<Arg>& args) {
  for (const Arg& a : args) {
    check_supported_device(*a.t, a.name);
    check_same_device(*a.t, *args.front().t, a.name, args.front().name);
  }
  for (size_t i = 0; i < args.size(); ++i)
    for (size_t k = i + 1; k < args.size(); ++k)
      if (args[i].mutated || args[k].mutated) check_no_overlap(*args[i].t, args[i].name, *args[k].t, args[k].name);
}

void check_vector(const at::Tensor& t, int64_t batch, at::ScalarType dtype, const char* name) {
  check_dtype(t, dtype, name);
  check_rank(t, 1, name);
  check_size(t, 0, batch, name, "batch");
  check_contiguous(t, name);
}

void check_matrix(const at::Tensor& t, int64_t batch, int64_t kmax, at::ScalarType dtype, const char* name) {
  check_dtype(t, dtype, name);
  check_rank(t, 2, name);
  check_size(t, 0, batch, name, "batch");
  check_size(t, 1, kmax, name, "Kmax");
  check_contiguous(t, name);
}

// --- draft_commit -----------------------------------------------------------------------------

DraftCommitParams draft_params(const at::Tensor& block, const at::Tensor& step, const at::Tensor& drafting,
                               const at::Tensor& pred, const at::Tensor& score, const at::Tensor& horizon,
                               const at::Tensor& threshold, int64_t mask_token_id, bool score_is_entropy) {
  check_dtype(block, at::kLong, "block");
  check_rank(block, 2, "block");
  check_contiguous(block, "block");
  const int64_t B = block.size(0), kmax = block.size(1);
  FLUID_CHECK_VALUE(kmax >= 1, "block: Kmax (dim 1) must be >= 1, got shape ", block.sizes());
  check_vector(step, B, at::kInt, "step");
  check_vector(drafting, B, at::kBool, "drafting");
  check_matrix(pred, B, kmax, at::kLong, "pred");
  check_matrix(score, B, kmax, at::kFloat, "score");
  check_vector(horizon, B, at::kInt, "horizon");
  check_vector(threshold, B, at::kFloat, "threshold");
  check_devices_and_overlap({{&block, "block", true},
                             {&step, "step", true},
                             {&drafting, "drafting", true},
                             {&pred, "pred", false},
                             {&score, "score", false},
                             {&horizon, "horizon", false},
                             {&threshold, "threshold", false}});
  DraftCommitParams p;
  p.block = block.data_ptr<int64_t>();
  p.step = step.data_ptr<int32_t>();
  p.drafting = drafting.data_ptr<bool>();
  p.pred = pred.data_ptr<int64_t>();
  p.score = score.data_ptr<float>();
  p.horizon = horizon.data_ptr<int32_t>();
  p.batch = B;
  p.kmax = kmax;
  p.threshold = threshold.data_ptr<float>();
  p.mask_token_id = mask_token_id;
  p.score_is_entropy = score_is_entropy;
  return p;
}

void draft_commit_cpu_impl(const at::Tensor& block, const at::Tensor& step, const at::Tensor& drafting,
                           const at::Tensor& pred, const at::Tensor& score, const at::Tensor& horizon,
                           const at::Tensor& threshold, int64_t mask_token_id, bool score_is_entropy) {
  const DraftCommitParams p =
      draft_params(block, step, drafting, pred, score, horizon, threshold, mask_token_id, score_is_entropy);
  // Host-side value checks (the kernel would only guard these rows).
  for (int64_t b = 0; b < p.batch; ++b) {
    if (!p.drafting[b]) continue;
    const int64_t K = p.horizon[b], s = p.step[b];
    FLUID_CHECK_VALUE(K >= 1 && K <= p.kmax, "horizon: row ", b, " has K = ", K, ", outside [1, Kmax = ", p.kmax,
                      "]");
    FLUID_CHECK_VALUE(s >= 0 && s < K, "step: row ", b, " has step = ", s, ", outside [0, horizon = ", K, ")");
  }
  draft_commit_cpu(p);
}

// --- verify_commit ----------------------------------------------------------------------------

VerifyCommitParams verify_params(const at::Tensor& block, const at::Tensor& pred, const at::Tensor& horizon,
                                 const at::Tensor& verifying, const at::Tensor& eos_ids, const at::Tensor& remask,
                                 const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                                 const at::Tensor& done, const at::Tensor& pending, const at::Tensor& cache_seqlens,
                                 const at::Tensor& committed, const at::Tensor& mismatch) {
  check_dtype(block, at::kLong, "block");
  check_rank(block, 2, "block");
  check_contiguous(block, "block");
  const int64_t B = block.size(0), kmax = block.size(1);
  FLUID_CHECK_VALUE(kmax >= 1, "block: Kmax (dim 1) must be >= 1, got shape ", block.sizes());
  check_matrix(pred, B, kmax, at::kLong, "pred");
  check_vector(horizon, B, at::kInt, "horizon");
  check_vector(verifying, B, at::kBool, "verifying");
  check_dtype(eos_ids, at::kLong, "eos_ids");
  check_rank(eos_ids, 2, "eos_ids");
  check_size(eos_ids, 0, B, "eos_ids", "batch");
  check_contiguous(eos_ids, "eos_ids");
  check_vector(remask, B, at::kBool, "remask");
  check_dtype(out_tokens, at::kLong, "out_tokens");
  check_rank(out_tokens, 2, "out_tokens");
  check_size(out_tokens, 0, B, "out_tokens", "batch");
  check_contiguous(out_tokens, "out_tokens");
  check_vector(out_len, B, at::kInt, "out_len");
  check_vector(budget, B, at::kInt, "budget");
  check_vector(done, B, at::kBool, "done");
  check_vector(pending, B, at::kLong, "pending");
  check_vector(cache_seqlens, B, at::kInt, "cache_seqlens");
  check_vector(committed, B, at::kInt, "committed");
  check_vector(mismatch, B, at::kInt, "mismatch");
  check_devices_and_overlap({{&block, "block", false},
                             {&pred, "pred", false},
                             {&horizon, "horizon", false},
                             {&verifying, "verifying", true},
                             {&eos_ids, "eos_ids", false},
                             {&remask, "remask", false},
                             {&out_tokens, "out_tokens", true},
                             {&out_len, "out_len", true},
                             {&budget, "budget", false},
                             {&done, "done", true},
                             {&pending, "pending", true},
                             {&cache_seqlens, "cache_seqlens", true},
                             {&committed, "committed", true},
                             {&mismatch, "mismatch", true}});
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
  p.batch = B;
  p.kmax = kmax;
  return p;
}

void verify_commit_cpu_impl(const at::Tensor& block, const at::Tensor& pred, const at::Tensor& horizon,
                            const at::Tensor& verifying, const at::Tensor& eos_ids, const at::Tensor& remask,
                            const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                            const at::Tensor& done, const at::Tensor& pending, const at::Tensor& cache_seqlens,
                            const at::Tensor& committed, const at::Tensor& mismatch) {
  const VerifyCommitParams p = verify_params(block, pred, horizon, verifying, eos_ids, remask, out_tokens, out_len,
                                             budget, done, pending, cache_seqlens, committed, mismatch);
  for (int64_t b = 0; b < p.batch; ++b) {
    if (!p.verifying[b] || p.done[b]) continue;
    const int64_t K = p.horizon[b], len = p.out_len[b], bud = p.budget[b];
    FLUID_CHECK_VALUE(K >= 1 && K <= p.kmax, "horizon: row ", b, " has K = ", K, ", outside [1, Kmax = ", p.kmax,
                      "]");
    FLUID_CHECK_VALUE(len >= 0 && len <= bud, "out_len: row ", b, " has out_len = ", len,
                      ", outside [0, budget = ", bud, "]");
    FLUID_CHECK_VALUE(bud <= p.out_stride, "budget: row ", b, " has budget = ", bud, " > N = ", p.out_stride,
                      " (out_tokens dim 1)");
  }
  verify_commit_cpu(p);
}

#ifdef FLUID_RT_WITH_CUDA
void draft_commit_cuda_impl(const at::Tensor& block, const at::Tensor& step, const at::Tensor& drafting,
                            const at::Tensor& pred, const at::Tensor& score, const at::Tensor& horizon,
                            const at::Tensor& threshold, int64_t mask_token_id, bool score_is_entropy) {
  const DraftCommitParams p =
      draft_params(block, step, drafting, pred, score, horizon, threshold, mask_token_id, score_is_entropy);
  const c10::cuda::CUDAGuard guard(block.device());
  launch_draft_commit(p, current_stream_for(block));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void verify_commit_cuda_impl(const at::Tensor& block, const at::Tensor& pred, const at::Tensor& horizon,
                             const at::Tensor& verifying, const at::Tensor& eos_ids, const at::Tensor& remask,
                             const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                             const at::Tensor& done, const at::Tensor& pending, const at::Tensor& cache_seqlens,
                             const at::Tensor& committed, const at::Tensor& mismatch) {
  const VerifyCommitParams p = verify_params(block, pred, horizon, verifying, eos_ids, remask, out_tokens, out_len,
                                             budget, done, pending, cache_seqlens, committed, mismatch);
  const c10::cuda::CUDAGuard guard(block.device());
  launch_verify_commit(p, current_stream_for(block));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}
#endif

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def(
      "draft_commit(Tensor(a!) block, Tensor(b!) step, Tensor(c!) drafting, Tensor pred, Tensor score, "
      "Tensor horizon, Tensor threshold, int mask_token_id, bool score_is_entropy) -> ()");
  m.def(
      "verify_commit(Tensor block, Tensor pred, Tensor horizon, Tensor(a!) verifying, Tensor eos_ids, "
      "Tensor remask, Tensor(b!) out_tokens, Tensor(c!) out_len, Tensor budget, Tensor(d!) done, "
      "Tensor(e!) pending, Tensor(f!) cache_seqlens, Tensor(g!) committed, Tensor(h!) mismatch) -> ()");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("draft_commit", &fluid_rt::draft_commit_cpu_impl);
  m.impl("verify_commit", &fluid_rt::verify_commit_cpu_impl);
}

#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) {
  m.impl("draft_commit", &fluid_rt::draft_commit_cuda_impl);
  m.impl("verify_commit", &fluid_rt::verify_commit_cuda_impl);
}
#endif
