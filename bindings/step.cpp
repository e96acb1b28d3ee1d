// khead_logits, elastic_step and ar_step (csrc/step): CPU-only ops. The decode steps read and write
// the state of a fluid_rt.decode.batch.Batch in place; their tables name each tensor once.
#include "commit/params.h"
#include "common.h"
#include "step/params.h"

namespace fluid_rt {
namespace {

constexpr char kCpuOnly[] = "the CPU decode step (on CUDA the decoder runs fluid_rt.decode.phases)";

constexpr ArgSpec kKHeadArgs[] = {
    {"hidden", kF32, "rows hidden", Layout::kContiguous},
    {"w1_t", kF32, "hidden inner>=1", Layout::kContiguous},
    {"b1", kF32, "inner", Layout::kContiguous},
    {"w2_t", kF32, "inner max_k>=1", Layout::kContiguous},
    {"b2", kF32, "max_k", Layout::kContiguous},
};
constexpr OpSpec kKHeadSpec{kKHeadArgs, kCpuOnly};

constexpr char kElasticStepSchema[] =
    "elastic_step(Tensor pred, Tensor score, Tensor entropy, Tensor lse, Tensor hidden, Tensor? khead_w1_t, "
    "Tensor? khead_b1, Tensor? khead_w2_t, Tensor? khead_b2, int horizon_kind, float entropy_low, "
    "float entropy_high, bool score_is_entropy, bool reuse_prefix, int mask_token_id, Tensor(a!) tokens, "
    "Tensor(b!) block, Tensor(c!) step, Tensor(d!) passes, Tensor(e!) horizon, Tensor(f!) final_pred, "
    "Tensor(g!) drafting, Tensor(h!) verifying, Tensor(i!) restart, Tensor(j!) done, Tensor(k!) start, "
    "Tensor(l!) pending, Tensor(m!) out_tokens, Tensor(n!) out_len, Tensor budget, Tensor(o!) cache_seqlens, "
    "Tensor(p!) committed, Tensor(q!) mismatch, Tensor eos_ids, Tensor remask, Tensor threshold, "
    "Tensor min_block, Tensor block_size, Tensor(r!) lse_sum, Tensor(s!) trace, Tensor(t!) host) -> ()";

constexpr ArgSpec kElasticStepArgs[] = {
    {"pred", kI64, "batch width>=1", Layout::kContiguous},
    {"score", kF32, "batch width", Layout::kContiguous},
    {"entropy", kF32, "batch width", Layout::kContiguous},
    {"lse", kF32, "batch width", Layout::kContiguous},
    {"hidden", kF32 | kBF16 | kF16, "batch width hidden", Layout::kContiguous},
    {"khead_w1_t", kF32, "hidden inner>=1", Layout::kContiguous, kOptional},
    {"khead_b1", kF32, "inner", Layout::kContiguous, kOptional},
    {"khead_w2_t", kF32, "inner max_k>=1", Layout::kContiguous, kOptional},
    {"khead_b2", kF32, "max_k", Layout::kContiguous, kOptional},
    {"tokens", kI64, "batch slots", Layout::kContiguous, kWritten},
    {"block", kI64, "batch Kmax>=1", Layout::kContiguous, kWritten},
    {"step", kI32, "batch", Layout::kContiguous, kWritten},
    {"passes", kI32, "batch", Layout::kContiguous, kWritten},
    {"horizon", kI32, "batch", Layout::kContiguous, kWritten},
    {"final_pred", kI64, "batch Kmax", Layout::kContiguous, kWritten},
    {"drafting", kBool, "batch", Layout::kContiguous, kWritten},
    {"verifying", kBool, "batch", Layout::kContiguous, kWritten},
    {"restart", kBool, "batch", Layout::kContiguous, kWritten},
    {"done", kBool, "batch", Layout::kContiguous, kWritten},
    {"start", kI32, "batch", Layout::kContiguous, kWritten},
    {"pending", kI64, "batch", Layout::kContiguous, kWritten},
    {"out_tokens", kI64, "batch out", Layout::kContiguous, kWritten},
    {"out_len", kI32, "batch", Layout::kContiguous, kWritten},
    {"budget", kI32, "batch", Layout::kContiguous},
    {"cache_seqlens", kI32, "batch", Layout::kContiguous, kWritten},
    {"committed", kI32, "batch", Layout::kContiguous, kWritten},
    {"mismatch", kI32, "batch", Layout::kContiguous, kWritten},
    {"eos_ids", kI64, "batch eos", Layout::kContiguous},
    {"remask", kBool, "batch", Layout::kContiguous},
    {"threshold", kF32, "batch", Layout::kContiguous},
    {"min_block", kI32, "batch", Layout::kContiguous},
    {"block_size", kI32, "batch", Layout::kContiguous},
    {"lse_sum", kF32, "batch", Layout::kContiguous, kWritten},
    {"trace", kI32, "batch fields records", Layout::kContiguous, kWritten},
    {"host", kI32, "batch host_fields", Layout::kContiguous, kWritten},
};
constexpr OpSpec kElasticStepSpec{kElasticStepArgs, kCpuOnly};

constexpr char kArStepSchema[] =
    "ar_step(Tensor pred, Tensor lse, Tensor(a!) out_tokens, Tensor(b!) out_len, Tensor budget, "
    "Tensor(c!) done, Tensor(d!) pending, Tensor(e!) cache_seqlens, Tensor(f!) committed, "
    "Tensor(g!) mismatch, Tensor eos_ids, Tensor remask, Tensor(h!) lse_sum, Tensor(i!) host) -> ()";

constexpr ArgSpec kArStepArgs[] = {
    {"pred", kI64, "batch", Layout::kContiguous},
    {"lse", kF32, "batch", Layout::kContiguous},
    {"out_tokens", kI64, "batch out", Layout::kContiguous, kWritten},
    {"out_len", kI32, "batch", Layout::kContiguous, kWritten},
    {"budget", kI32, "batch", Layout::kContiguous},
    {"done", kBool, "batch", Layout::kContiguous, kWritten},
    {"pending", kI64, "batch", Layout::kContiguous, kWritten},
    {"cache_seqlens", kI32, "batch", Layout::kContiguous, kWritten},
    {"committed", kI32, "batch", Layout::kContiguous, kWritten},
    {"mismatch", kI32, "batch", Layout::kContiguous, kWritten},
    {"eos_ids", kI64, "batch eos", Layout::kContiguous},
    {"remask", kBool, "batch", Layout::kContiguous},
    {"lse_sum", kF32, "batch", Layout::kContiguous, kWritten},
    {"host", kI32, "batch host_fields", Layout::kContiguous, kWritten},
};
constexpr OpSpec kArStepSpec{kArStepArgs, kCpuOnly};

// out_len within [0, budget] and budget within [0, N] for every row (the commit ops check the same).
void check_lengths(const StepCommitState& c, int64_t batch) {
  for (int64_t b = 0; b < batch; ++b)
    FLUID_CHECK_VALUE(c.out_len[b] >= 0 && c.out_len[b] <= c.budget[b] && c.budget[b] <= c.out_stride,
                      "out_len, budget: row ", b, " has ", c.out_len[b], ", ", c.budget[b],
                      ", expected 0 <= out_len <= budget <= N = ", c.out_stride);
}

// The commit state both steps update (host [batch, kHostFields] checked here, the rest by the tables).
StepCommitState describe_commit_state(const at::Tensor& out_tokens, const at::Tensor& out_len,
                                      const at::Tensor& budget, const at::Tensor& done,
                                      const at::Tensor& pending, const at::Tensor& cache_seqlens,
                                      const at::Tensor& committed, const at::Tensor& mismatch,
                                      const at::Tensor& eos_ids, const at::Tensor& remask,
                                      const at::Tensor& lse_sum, const at::Tensor& host) {
  FLUID_CHECK_VALUE(host.size(1) == kHostFields, "host: expected [batch, ", kHostFields, "], got ",
                    host.sizes());
  StepCommitState c;
  c.out_tokens = out_tokens.numel() > 0 ? out_tokens.data_ptr<int64_t>() : nullptr;
  c.out_stride = out_tokens.size(1);
  c.out_len = out_len.data_ptr<int32_t>();
  c.budget = budget.data_ptr<int32_t>();
  c.done = done.data_ptr<bool>();
  c.pending = pending.data_ptr<int64_t>();
  c.cache_seqlens = cache_seqlens.data_ptr<int32_t>();
  c.committed = committed.data_ptr<int32_t>();
  c.mismatch = mismatch.data_ptr<int32_t>();
  c.eos_ids = eos_ids.numel() > 0 ? eos_ids.data_ptr<int64_t>() : nullptr;
  c.num_eos = eos_ids.size(1);
  c.remask = remask.data_ptr<bool>();
  c.lse_sum = lse_sum.data_ptr<float>();
  c.host = host.data_ptr<int32_t>();
  return c;
}

KHeadWeights describe_khead(const at::Tensor& w1_t, const at::Tensor& b1, const at::Tensor& w2_t,
                            const at::Tensor& b2) {
  KHeadWeights w{w1_t.data_ptr<float>(),
                 b1.data_ptr<float>(),
                 w2_t.data_ptr<float>(),
                 b2.data_ptr<float>(),
                 w1_t.size(0),
                 w1_t.size(1),
                 w2_t.size(1)};
  FLUID_CHECK_VALUE(w.inner <= kKHeadMaxInner, "w1_t: at most ", kKHeadMaxInner, " inner units, got ",
                    w.inner);
  FLUID_CHECK_VALUE(w.max_k <= kKHeadMaxK, "w2_t: at most ", kKHeadMaxK, " classes, got ", w.max_k);
  return w;
}

at::Tensor khead_logits_impl(const at::Tensor& hidden, const at::Tensor& w1_t, const at::Tensor& b1,
                             const at::Tensor& w2_t, const at::Tensor& b2) {
  check_args(kKHeadSpec, {hidden, w1_t, b1, w2_t, b2});
  const KHeadWeights w = describe_khead(w1_t, b1, w2_t, b2);
  at::Tensor out = at::empty({hidden.size(0), w.max_k}, hidden.options());
  const float* h = hidden.data_ptr<float>();
  float* o = out.data_ptr<float>();
  for (int64_t r = 0; r < hidden.size(0); ++r) khead_logits(w, h + r * w.hidden, o + r * w.max_k);
  return out;
}

// Values only the state knows, checked before any row is touched (the commit ops check the same;
// `start` needs none: it is only compared, and outputs are read through a clamped index).
void check_step_values(const ElasticStepParams& p) {
  for (int64_t b = 0; b < p.batch; ++b) {
    FLUID_CHECK_VALUE(p.min_block[b] >= 1 && p.min_block[b] <= p.block_size[b] && p.block_size[b] <= p.kmax,
                      "min_block, block_size: row ", b, " has ", p.min_block[b], ", ", p.block_size[b],
                      ", expected 1 <= min_block <= block_size <= Kmax = ", p.kmax);
  }
  check_lengths(p.c, p.batch);
}

void elastic_step_impl(const at::Tensor& pred, const at::Tensor& score, const at::Tensor& entropy,
                       const at::Tensor& lse, const at::Tensor& hidden, const std::optional<at::Tensor>& w1_t,
                       const std::optional<at::Tensor>& b1, const std::optional<at::Tensor>& w2_t,
                       const std::optional<at::Tensor>& b2, int64_t horizon_kind, double entropy_low,
                       double entropy_high, bool score_is_entropy, bool reuse_prefix, int64_t mask_token_id,
                       const at::Tensor& tokens, const at::Tensor& block, const at::Tensor& step,
                       const at::Tensor& passes, const at::Tensor& horizon, const at::Tensor& final_pred,
                       const at::Tensor& drafting, const at::Tensor& verifying, const at::Tensor& restart,
                       const at::Tensor& done, const at::Tensor& start, const at::Tensor& pending,
                       const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                       const at::Tensor& cache_seqlens, const at::Tensor& committed,
                       const at::Tensor& mismatch, const at::Tensor& eos_ids, const at::Tensor& remask,
                       const at::Tensor& threshold, const at::Tensor& min_block, const at::Tensor& block_size,
                       const at::Tensor& lse_sum, const at::Tensor& trace, const at::Tensor& host) {
  check_args(kElasticStepSpec, {pred,       score,     entropy,   lse,           hidden,    w1_t,     b1,
                                w2_t,       b2,        tokens,    block,         step,      passes,   horizon,
                                final_pred, drafting,  verifying, restart,       done,      start,    pending,
                                out_tokens, out_len,   budget,    cache_seqlens, committed, mismatch, eos_ids,
                                remask,     threshold, min_block, block_size,    lse_sum,   trace,    host});
  const int64_t kmax = block.size(1);
  FLUID_CHECK_VALUE(horizon_kind >= 0 && horizon_kind <= 2, "horizon_kind: expected 0 (khead), 1 (entropy) ",
                    "or 2 (fixed), got ", horizon_kind);
  const bool khead = horizon_kind == static_cast<int64_t>(HorizonKind::kKHead);
  FLUID_CHECK_VALUE(!khead || (w1_t && b1 && w2_t && b2),
                    "khead_w1_t, khead_b1, khead_w2_t, khead_b2: ", "the khead horizon needs the K-head");
  FLUID_CHECK_VALUE(kmax <= kStepMaxKmax, "block: at most ", kStepMaxKmax, " positions, got ", kmax);
  FLUID_CHECK_VALUE(tokens.size(1) == 1 + 2 * kmax, "tokens: expected [batch, 1 + 2 * Kmax = ", 1 + 2 * kmax,
                    "], got ", tokens.sizes());
  FLUID_CHECK_VALUE(trace.size(1) == kTraceFields && trace.size(2) == kTraceRecords,
                    "trace: expected [batch, ", kTraceFields, ", ", kTraceRecords, "], got ", trace.sizes());
  ElasticStepParams p;
  p.pred = pred.data_ptr<int64_t>();
  p.score = score.data_ptr<float>();
  p.entropy = entropy.data_ptr<float>();
  p.lse = lse.data_ptr<float>();
  p.hidden = hidden.data_ptr();
  p.hidden_dtype = float_dtype_of(hidden, "hidden");
  p.width = pred.size(1);
  p.hidden_size = hidden.size(2);
  p.horizon_kind = static_cast<HorizonKind>(horizon_kind);
  p.entropy_high = static_cast<float>(entropy_high);
  p.entropy_span =
      static_cast<float>(entropy_high - entropy_low);  // as Python divides: in double, then float32
  if (khead) p.khead = describe_khead(*w1_t, *b1, *w2_t, *b2);
  p.score_is_entropy = score_is_entropy;
  p.reuse_prefix = reuse_prefix;
  p.mask_token_id = mask_token_id;
  p.batch = block.size(0);
  p.kmax = kmax;
  p.tokens = tokens.data_ptr<int64_t>();
  p.block = block.data_ptr<int64_t>();
  p.step = step.data_ptr<int32_t>();
  p.passes = passes.data_ptr<int32_t>();
  p.horizon = horizon.data_ptr<int32_t>();
  p.start = start.data_ptr<int32_t>();
  p.final_pred = final_pred.data_ptr<int64_t>();
  p.drafting = drafting.data_ptr<bool>();
  p.verifying = verifying.data_ptr<bool>();
  p.restart = restart.data_ptr<bool>();
  p.threshold = threshold.data_ptr<float>();
  p.min_block = min_block.data_ptr<int32_t>();
  p.block_size = block_size.data_ptr<int32_t>();
  p.trace = trace.data_ptr<int32_t>();
  p.c = describe_commit_state(out_tokens, out_len, budget, done, pending, cache_seqlens, committed, mismatch,
                              eos_ids, remask, lse_sum, host);
  check_step_values(p);
  elastic_step_cpu(p);
}

void ar_step_impl(const at::Tensor& pred, const at::Tensor& lse, const at::Tensor& out_tokens,
                  const at::Tensor& out_len, const at::Tensor& budget, const at::Tensor& done,
                  const at::Tensor& pending, const at::Tensor& cache_seqlens, const at::Tensor& committed,
                  const at::Tensor& mismatch, const at::Tensor& eos_ids, const at::Tensor& remask,
                  const at::Tensor& lse_sum, const at::Tensor& host) {
  check_args(kArStepSpec, {pred, lse, out_tokens, out_len, budget, done, pending, cache_seqlens, committed,
                           mismatch, eos_ids, remask, lse_sum, host});
  ArStepParams p;
  p.pred = pred.data_ptr<int64_t>();
  p.lse = lse.data_ptr<float>();
  p.batch = pred.size(0);
  p.c = describe_commit_state(out_tokens, out_len, budget, done, pending, cache_seqlens, committed, mismatch,
                              eos_ids, remask, lse_sum, host);
  check_lengths(p.c, p.batch);
  ar_step_cpu(p);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("khead_logits(Tensor hidden, Tensor w1_t, Tensor b1, Tensor w2_t, Tensor b2) -> Tensor");
  m.def(kElasticStepSchema);
  m.def(kArStepSchema);
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("khead_logits", &khead_logits_impl);
  m.impl("elastic_step", &elastic_step_impl);
  m.impl("ar_step", &ar_step_impl);
}

}  // namespace fluid_rt
