// The elastic decode step on the CPU: everything between two elastic forwards (the phases of
// fluid_rt/decode/phases.py: verify, start blocks, draft, settle early, next input) for every row,
// as one plain loop over rows.
//
// Why a second form of the phases: on the CPU the ~100 small tensor ops of the Python phases run
// right after a forward has streamed the whole model through the caches, so each kind of op starts
// cold (75-107 us for the first gelu after a forward, ~15 us for the next one) and a step spent
// ~1 ms between forwards. The phases stay the definition (a CUDA graph captures them, and
// `steps="static"` runs them on the CPU); this loop must leave the same state, bit for bit, which
// the tests check on every golden case and horizon policy.
//
// Row b's forward output j is its input slot start[b] + j (width outputs per row). All tensors are
// contiguous; [B, Kmax] matrices have row stride Kmax.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "step/khead.h"

namespace fluid_rt {

enum class HorizonKind : int { kKHead = 0, kEntropy = 1, kFixed = 2 };

// The row the host reads after a step (fluid_rt.decode.batch.read_host), written by the step ops so
// that the read is one copy: the trace records, out_len, done, the slots the next eager forward
// feeds (Batch.slots_needed) and lse_sum's float32 bits.
constexpr int kTraceFields = 5,
              kTraceRecords = 2;  // StepTraces: settled, K, draft_passes, committed, mismatch
constexpr int64_t kTraceInts = kTraceFields * kTraceRecords;
constexpr int64_t kHostFields = kTraceInts + 4;

// What a commit updates (verify_commit's state, fluid_rt.decode.batch.Batch's tensors) and what the
// host reads afterwards: the part both steps share, row b at b (or b * the row's width).
struct StepCommitState {
  int64_t* out_tokens = nullptr;  // [B, N]
  int64_t out_stride = 0;         // N
  int32_t* out_len = nullptr;     // [B]
  const int32_t* budget = nullptr;
  bool* done = nullptr;
  int64_t* pending = nullptr;
  int32_t *cache_seqlens = nullptr, *committed = nullptr, *mismatch = nullptr;
  const int64_t* eos_ids = nullptr;  // [B, E]
  int64_t num_eos = 0;
  const bool* remask = nullptr;
  float* lse_sum = nullptr;  // sum of the row's logsumexps in the last forward (finite or not is its use)
  int32_t* host = nullptr;   // [B, kHostFields]
};

struct ElasticStepParams {
  // This forward's outputs (ops.token_entropy of its logits, and its normed hidden states).
  const int64_t* pred = nullptr;   // [B, W] argmax
  const float* score = nullptr;    // [B, W] the commit policy's score (max prob or entropy)
  const float* entropy = nullptr;  // [B, W]
  const float* lse = nullptr;      // [B, W] logsumexp
  const void* hidden = nullptr;    // [B, W, H]
  DType hidden_dtype = DType::kFloat32;
  int64_t width = 0, hidden_size = 0;
  // Policies (fluid_rt.policies).
  HorizonKind horizon_kind = HorizonKind::kKHead;
  float entropy_high = 0.f, entropy_span = 0.f;  // entropy_high and (high - low), each as float32
  KHeadWeights khead;                            // for kKHead
  bool score_is_entropy = false;
  bool reuse_prefix = false;  // eager steps: the next forward starts after the reused prefix
  int64_t mask_token_id = 0;
  // The batch (fluid_rt.decode.batch.Batch), updated in place.
  int64_t batch = 0, kmax = 0;  // B, block_size
  int64_t* tokens = nullptr;    // [B, 1 + 2 Kmax] the next forward's input
  int64_t* block = nullptr;     // [B, Kmax]
  int32_t *step = nullptr, *passes = nullptr, *horizon = nullptr, *start = nullptr;  // [B]
  int64_t* final_pred = nullptr;                                                     // [B, Kmax]
  bool *drafting = nullptr, *verifying = nullptr, *restart = nullptr;                // [B]
  const float* threshold = nullptr;
  const int32_t *min_block = nullptr, *block_size = nullptr;  // [B]
  int32_t* trace = nullptr;                                   // [B, kTraceFields, kTraceRecords]
  StepCommitState c;
};

// Greedy AR's step on the CPU (phases.commit_ar): commit each live row's argmax after its last slot.
struct ArStepParams {
  const int64_t* pred = nullptr;  // [B] argmax
  const float* lse = nullptr;     // [B] logsumexp
  int64_t batch = 0;
  StepCommitState c;
};

constexpr int64_t kStepMaxKmax = 64;  // block_size bound of the step's per-row buffers

void elastic_step_cpu(const ElasticStepParams& p);
void ar_step_cpu(const ArStepParams& p);

}  // namespace fluid_rt
