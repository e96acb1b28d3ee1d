// causal_attention's binding pieces that every impl of the op shares (bindings/common.h says how).
#pragma once
#include <optional>
#include <tuple>

#include "attention/params.h"
#include "common.h"

namespace fluid_rt {

inline constexpr char kCausalAttentionSchema[] =
    "causal_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_seqlens, Tensor? "
    "k=None, "
    "Tensor? v=None, Tensor? cache_batch_idx=None, float? softmax_scale=None) -> (Tensor out, Tensor lse)";

inline constexpr ArgSpec kCausalAttentionArgs[] = {
    {"q", kAnyFloat, "batch tokens heads_q head_dim", Layout::kLastDimContiguous},
    {"k_cache", kAnyFloat, "cache_rows cache_len heads_kv>=1 head_dim", Layout::kContiguous, kWritten},
    {"v_cache", kAnyFloat, "cache_rows cache_len heads_kv head_dim", Layout::kContiguous, kWritten},
    {"cache_seqlens", kI32, "batch", Layout::kContiguous},
    {"k", kAnyFloat, "batch tokens heads_kv head_dim", Layout::kLastDimContiguous, kOptional},
    {"v", kAnyFloat, "batch tokens heads_kv head_dim", Layout::kLastDimContiguous, kOptional},
    {"cache_batch_idx", kI32, "batch", Layout::kContiguous, kOptional},
};
inline constexpr OpSpec kCausalAttentionSpec{kCausalAttentionArgs};

// Checks every argument (never reading device memory) and describes the call; the outputs (and
// the CUDA split-KV plan) are left to the caller.
CausalAttentionParams describe_causal_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                const std::optional<at::Tensor>& k,
                                                const std::optional<at::Tensor>& v,
                                                const std::optional<at::Tensor>& cache_batch_idx,
                                                std::optional<double> softmax_scale);

// (out [B, T, Hq, D] in q's dtype, lse [B, T, Hq] float32) on q's device; their pointers go into p.
std::tuple<at::Tensor, at::Tensor> causal_attention_outputs(const at::Tensor& q, CausalAttentionParams& p);

// The CPU's checks of cache_seqlens / cache_batch_idx values (host values there; on CUDA the kernel
// guards them).
void check_attention_host_values(const CausalAttentionParams& p);

// The op's impl (for fused ops that run it without a dispatch: bindings/layer.cpp).
std::tuple<at::Tensor, at::Tensor> causal_attention_impl(const at::Tensor& q, at::Tensor& k_cache,
                                                         at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                         const std::optional<at::Tensor>& k,
                                                         const std::optional<at::Tensor>& v,
                                                         const std::optional<at::Tensor>& cache_batch_idx,
                                                         std::optional<double> softmax_scale);

}  // namespace fluid_rt
