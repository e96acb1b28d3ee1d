// The CPU decode step (params.h): fluid_rt/decode/phases.py for one row at a time, each phase
// commented with the Python it stands for. Rows are independent, so running them one after the
// other leaves what the phases' batched tensor ops leave.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "commit/params.h"
#include "step/params.h"

namespace fluid_rt {

void khead_logits(const KHeadWeights& w, const float* h, float* out) {
  float mid[kKHeadMaxInner];
  // Each output sums its inputs in order; the loops run over outputs innermost, so they vectorize
  // without reordering a sum.
  for (int64_t o = 0; o < w.inner; ++o) mid[o] = 0.f;
  for (int64_t k = 0; k < w.hidden; ++k) {
    const float hk = h[k];
    const float* row = w.w1_t + k * w.inner;
    for (int64_t o = 0; o < w.inner; ++o) mid[o] += hk * row[o];
  }
  for (int64_t o = 0; o < w.inner; ++o) {
    const float x = mid[o] + w.b1[o];
    mid[o] = x * 0.5f * (1.f + std::erf(x * 0.70710678118654752f));  // GELU, exact form
  }
  for (int64_t j = 0; j < w.max_k; ++j) out[j] = 0.f;
  for (int64_t o = 0; o < w.inner; ++o) {
    const float* row = w.w2_t + o * w.max_k;
    for (int64_t j = 0; j < w.max_k; ++j) out[j] += mid[o] * row[j];
  }
  for (int64_t j = 0; j < w.max_k; ++j) out[j] += w.b2[j];
}

namespace {

// One row's view of the step: its outputs and state.
struct Row {
  const ElasticStepParams& p;
  int64_t b;

  // Outputs.at: the output at input slot `slot` (clamped into the forward; never read outside).
  int64_t out_index(int64_t slot) const {
    return b * p.width + std::clamp<int64_t>(slot - p.start[b], 0, p.width - 1);
  }
  int64_t* block() const { return p.block + b * p.kmax; }
  int64_t* final_pred() const { return p.final_pred + b * p.kmax; }
};

// A one-row VerifyCommitParams (its row 0 is row b of c) committing `block` against `pred` with
// horizon *K if *selected.
VerifyCommitParams one_row_verify(const StepCommitState& c, int64_t b, const int64_t* block,
                                  const int64_t* pred, const int32_t* K, int64_t kmax, bool* selected) {
  VerifyCommitParams v;
  v.block = block;
  v.pred = pred;
  v.horizon = K;
  v.verifying = selected;
  v.eos_ids = c.num_eos > 0 ? c.eos_ids + b * c.num_eos : nullptr;
  v.num_eos = c.num_eos;
  v.remask = c.remask + b;
  v.out_tokens = c.out_tokens + b * c.out_stride;
  v.out_stride = c.out_stride;
  v.out_len = c.out_len + b;
  v.budget = c.budget + b;
  v.done = c.done + b;
  v.pending = c.pending + b;
  v.cache_seqlens = c.cache_seqlens + b;
  v.committed = c.committed + b;
  v.mismatch = c.mismatch + b;
  v.batch = 1;
  v.kmax = kmax;
  return v;
}

// The row's block committed against `pred` if *selected (verify_commit on row b).
void commit_block(const Row& r, const int64_t* pred, bool* selected) {
  verify_commit_row(one_row_verify(r.p.c, r.b, r.block(), pred, r.p.horizon + r.b, r.p.kmax, selected), 0);
}

// StepTraces.record(i, settled, ...) for row b.
void record(const Row& r, int i, bool settled) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b;
  int32_t* t = p.trace + b * kTraceInts;
  const int32_t fields[kTraceFields] = {settled, p.horizon[b], p.passes[b], p.c.committed[b],
                                        p.c.mismatch[b]};
  for (int f = 0; f < kTraceFields; ++f) t[kTraceRecords * f + i] = fields[f];
}

// read_outputs: lse_sum = the row's logsumexps summed, left to right (torch.sum may order the adds
// otherwise: the value only says whether the row's logits were all finite, which any order tells).
void read_outputs(const Row& r) {
  float sum = 0.f;
  for (int64_t j = 0; j < r.p.width; ++j) sum += r.p.lse[r.b * r.p.width + j];
  r.p.c.lse_sum[r.b] = sum;
}

// Phase 1 (verify): returns {accepted, rejected}.
std::pair<bool, bool> verify(const Row& r) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b;
  const bool was_verifying = p.verifying[b];
  int64_t pred[kStepMaxKmax];
  for (int64_t j = 0; j < p.kmax; ++j)  // positions before start: the draft passes' final_pred
    pred[j] = j < p.start[b] ? r.final_pred()[j] : p.pred[r.out_index(j)];
  commit_block(r, pred, p.verifying + b);
  record(r, 0, was_verifying);
  const bool live = !p.c.done[b];
  return {was_verifying && p.c.mismatch[b] < 0 && live, was_verifying && p.c.mismatch[b] >= 0 && live};
}

// HorizonPolicy.choose for one row (its float32 steps as torch takes them).
int32_t choose_horizon(const Row& r, int64_t col) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b, lo = p.min_block[b], hi = p.block_size[b];
  int64_t k = hi;
  if (p.horizon_kind == HorizonKind::kKHead) {
    std::vector<float> h(p.hidden_size);
    float logits[kKHeadMaxK];
    const int64_t at = (b * p.width + col) * p.hidden_size;
    for (int64_t i = 0; i < p.hidden_size; ++i) h[i] = load_as_float(p.hidden, at + i, p.hidden_dtype);
    khead_logits(p.khead, h.data(), logits);
    int64_t best = 0;  // torch.argmax: the first maximum, a NaN counting as the maximum
    for (int64_t j = 1; j < p.khead.max_k && !std::isnan(logits[best]); ++j)
      if (std::isnan(logits[j]) || logits[j] > logits[best]) best = j;
    k = best + 1;
  } else if (p.horizon_kind == HorizonKind::kEntropy) {
    // frac = ((high - H) / span).clamp(0, 1) (NaN stays NaN), then round(lo + (hi - lo) * frac)
    // with the product rounded before the add, all in float32 as torch takes them.
    const float e = p.entropy[b * p.width + col];
    const float frac = std::min(std::max((p.entropy_high - e) / p.entropy_span, 0.f), 1.f);
    volatile float scaled = static_cast<float>(hi - lo) * frac;  // volatile: never fused into an FMA
    const float rounded = std::nearbyint(static_cast<float>(lo) + scaled);
    k = std::isnan(rounded) ? INT32_MIN : static_cast<int32_t>(rounded);  // NaN: x86's conversion
  }
  return static_cast<int32_t>(std::min(std::max(k, lo), hi));
}

// Phase 2 (start_blocks): returns {new block, its pending token's input slot}.
std::pair<bool, int64_t> start_block(const Row& r, bool accepted) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b;
  const bool fresh = (p.restart[b] || accepted) && !p.c.done[b];
  const int64_t slot = accepted ? p.horizon[b] : 0;
  if (!fresh) return {false, slot};
  // The pending token's output column (clamped into the forward, as out_index: a valid state never
  // needs the clamp, and a broken one must not read past the outputs).
  p.horizon[b] = choose_horizon(r, std::clamp<int64_t>(slot - p.start[b], 0, p.width - 1));
  std::fill(r.block(), r.block() + p.kmax, p.mask_token_id);
  p.step[b] = 0;
  p.passes[b] = 0;
  p.drafting[b] = true;
  return {true, slot};
}

// What draft() leaves for settle_early (phases.DraftPass).
struct DraftPass {
  bool drafting, filled;
  int32_t step_before;
  bool known[kStepMaxKmax];
};

// Phase 3 (draft).
DraftPass draft(const Row& r, bool fresh, int64_t slot) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b;
  DraftPass d;
  d.drafting = p.drafting[b];
  d.step_before = p.step[b];
  int64_t pred[kStepMaxKmax];
  float score[kStepMaxKmax];
  for (int64_t j = 0; j < p.kmax; ++j) {
    const int64_t s = (fresh ? slot : 0) + j, at = r.out_index(s);
    pred[j] = p.pred[at];
    score[j] = p.score[at];
    d.known[j] = j <= d.step_before;
    if (d.drafting && d.known[j] && s >= p.start[b]) r.final_pred()[j] = pred[j];
  }
  p.passes[b] += d.drafting;
  DraftCommitParams c;
  c.block = r.block();
  c.step = p.step + b;
  c.drafting = p.drafting + b;
  c.pred = pred;
  c.score = score;
  c.horizon = p.horizon + b;
  c.batch = 1;
  c.kmax = p.kmax;
  c.threshold = p.threshold + b;
  c.mask_token_id = p.mask_token_id;
  c.score_is_entropy = p.score_is_entropy;
  draft_commit_row(c, 0);
  d.filled = d.drafting && !p.drafting[b];
  return d;
}

// Phase 4 (settle_early): returns whether the row committed with a mismatch and still runs.
bool settle_early(const Row& r, const DraftPass& d) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b;
  const int64_t *block = r.block(), *final_pred = r.final_pred();
  const bool remask = p.c.remask[b];
  int64_t first_wrong = -1;
  for (int64_t j = 0; j < p.kmax && first_wrong < 0; ++j)
    if (remask && d.known[j] && block[j] != final_pred[j]) first_wrong = j;
  const bool any_wrong = first_wrong >= 0;
  const int64_t take = any_wrong ? first_wrong + 1 : d.step_before + 1;
  bool eos_taken = false;
  for (int64_t j = 0; j < take && j < p.kmax; ++j) {
    const int64_t t = remask ? final_pred[j] : block[j];
    eos_taken |= t >= 0 && is_eos_token(p.c.eos_ids + b * p.c.num_eos, p.c.num_eos, t);
  }
  const bool last = d.drafting && (take >= p.c.budget[b] - p.c.out_len[b] || eos_taken);
  const bool early = (d.filled && any_wrong) || last;
  p.drafting[b] = p.drafting[b] && !early;
  int64_t pred[kStepMaxKmax];
  for (int64_t j = 0; j < p.kmax; ++j) pred[j] = d.known[j] ? final_pred[j] : block[j];
  bool selected = early;
  commit_block(r, pred, &selected);
  record(r, 1, early);
  p.verifying[b] = p.verifying[b] || (d.filled && !early);
  return early && !p.c.done[b];
}

// Phase 5 (next_input).
void next_input(const Row& r, bool rejected, const DraftPass& d) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b, bs = p.kmax;
  if (p.reuse_prefix) p.start[b] = p.drafting[b] || p.verifying[b] ? d.step_before + 1 : 0;
  p.restart[b] = rejected;
  if (rejected) std::fill(r.block(), r.block() + bs, p.mask_token_id);
  int64_t* tokens = p.tokens + b * (1 + 2 * bs);
  tokens[0] = p.c.pending[b];
  for (int64_t j = 0; j < bs; ++j) tokens[1 + j] = j < p.horizon[b] ? r.block()[j] : p.mask_token_id;
  for (int64_t j = 0; j < bs; ++j) tokens[1 + bs + j] = p.mask_token_id;
}

// Batch.slots_needed: up to K for a draft pass, K + bs for a verify, bs for a restart, minus the
// reused prefix.
int32_t slots_needed(const Row& r) {
  const ElasticStepParams& p = r.p;
  const int64_t b = r.b, bs = p.kmax;
  const int64_t need = p.restart[b] ? bs : p.verifying[b] ? p.horizon[b] + bs : p.horizon[b];
  return static_cast<int32_t>(need - p.start[b]);
}

// The host row (params.h), from the step's final state.
void write_host(int32_t* host, const int32_t* trace, int32_t out_len, bool done, int32_t need,
                float lse_sum) {
  std::copy(trace, trace + kTraceInts, host);
  host[kTraceInts] = out_len;
  host[kTraceInts + 1] = done;
  host[kTraceInts + 2] = need;
  std::memcpy(host + kTraceInts + 3, &lse_sum, sizeof(float));
}

}  // namespace

void elastic_step_cpu(const ElasticStepParams& p) {
  for (int64_t b = 0; b < p.batch; ++b) {
    const Row r{p, b};
    read_outputs(r);
    auto [accepted, rejected] = verify(r);
    const auto [fresh, slot] = start_block(r, accepted);
    const DraftPass d = draft(r, fresh, slot);
    rejected = settle_early(r, d) || rejected;
    next_input(r, rejected, d);
    write_host(p.c.host + b * kHostFields, p.trace + b * kTraceInts, p.c.out_len[b], p.c.done[b],
               slots_needed(r), p.c.lse_sum[b]);
  }
}

void ar_step_cpu(const ArStepParams& p) {
  const int32_t one = 1, no_trace[kTraceInts] = {};
  for (int64_t b = 0; b < p.batch; ++b) {
    p.c.lse_sum[b] = p.lse[b];
    bool selected = !p.c.done[b];  // a one-token block, accepted as it is
    verify_commit_row(one_row_verify(p.c, b, p.pred + b, p.pred + b, &one, 1, &selected), 0);
    write_host(p.c.host + b * kHostFields, no_trace, p.c.out_len[b], p.c.done[b], 1, p.c.lse_sum[b]);
  }
}

}  // namespace fluid_rt
