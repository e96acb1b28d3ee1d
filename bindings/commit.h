// draft_commit's and verify_commit's binding pieces that every impl of the ops shares
// (bindings/common.h says how). Every argument is read or written in place; the ops return nothing.
#pragma once
#include "commit/params.h"
#include "common.h"

namespace fluid_rt {

inline constexpr char kDraftCommitSchema[] =
    "draft_commit(Tensor(a!) block, Tensor(b!) step, Tensor(c!) drafting, Tensor pred, Tensor score, "
    "Tensor horizon, Tensor threshold, int mask_token_id, bool score_is_entropy) -> ()";

inline constexpr ArgSpec kDraftCommitArgs[] = {
    {"block", kI64, "batch Kmax>=1", Layout::kContiguous, kWritten},
    {"step", kI32, "batch", Layout::kContiguous, kWritten},
    {"drafting", kBool, "batch", Layout::kContiguous, kWritten},
    {"pred", kI64, "batch Kmax", Layout::kContiguous},
    {"score", kF32, "batch Kmax", Layout::kContiguous},
    {"horizon", kI32, "batch", Layout::kContiguous},
    {"threshold", kF32, "batch", Layout::kContiguous},
};
inline constexpr OpSpec kDraftCommitSpec{kDraftCommitArgs};

inline constexpr char kVerifyCommitSchema[] =
    "verify_commit(Tensor block, Tensor pred, Tensor horizon, Tensor(a!) verifying, Tensor eos_ids, "
    "Tensor remask, Tensor(b!) out_tokens, Tensor(c!) out_len, Tensor budget, Tensor(d!) done, "
    "Tensor(e!) pending, Tensor(f!) cache_seqlens, Tensor(g!) committed, Tensor(h!) mismatch) -> ()";

inline constexpr ArgSpec kVerifyCommitArgs[] = {
    {"block", kI64, "batch Kmax>=1", Layout::kContiguous},
    {"pred", kI64, "batch Kmax", Layout::kContiguous},
    {"horizon", kI32, "batch", Layout::kContiguous},
    {"verifying", kBool, "batch", Layout::kContiguous, kWritten},
    {"eos_ids", kI64, "batch eos", Layout::kContiguous},
    {"remask", kBool, "batch", Layout::kContiguous},
    {"out_tokens", kI64, "batch N", Layout::kContiguous, kWritten},
    {"out_len", kI32, "batch", Layout::kContiguous, kWritten},
    {"budget", kI32, "batch", Layout::kContiguous},
    {"done", kBool, "batch", Layout::kContiguous, kWritten},
    {"pending", kI64, "batch", Layout::kContiguous, kWritten},
    {"cache_seqlens", kI32, "batch", Layout::kContiguous, kWritten},
    {"committed", kI32, "batch", Layout::kContiguous, kWritten},
    {"mismatch", kI32, "batch", Layout::kContiguous, kWritten},
};
inline constexpr OpSpec kVerifyCommitSpec{kVerifyCommitArgs};

// Check every argument (never reading device memory) and describe the call.
DraftCommitParams describe_draft_commit(const at::Tensor& block, const at::Tensor& step,
                                        const at::Tensor& drafting, const at::Tensor& pred,
                                        const at::Tensor& score, const at::Tensor& horizon,
                                        const at::Tensor& threshold, int64_t mask_token_id,
                                        bool score_is_entropy);

VerifyCommitParams describe_verify_commit(const at::Tensor& block, const at::Tensor& pred,
                                          const at::Tensor& horizon, const at::Tensor& verifying,
                                          const at::Tensor& eos_ids, const at::Tensor& remask,
                                          const at::Tensor& out_tokens, const at::Tensor& out_len,
                                          const at::Tensor& budget, const at::Tensor& done,
                                          const at::Tensor& pending, const at::Tensor& cache_seqlens,
                                          const at::Tensor& committed, const at::Tensor& mismatch);

}  // namespace fluid_rt
