// Entry points of the emulation build (FLUID_RT_CUDA_EMU): each family's CUDA launcher
// (csrc/<family>/cuda_kernels.cuh) run by the emulator on host memory. The planners use the
// emulated SM count of emu::get_config(). Every call throws emu::EmuError when a launch fails.
#pragma once
#include <cstddef>
#include <cstdint>

#include "attention/params.h"
#include "commit/params.h"
#include "emu/runtime.h"
#include "entropy/params.h"
#include "norm/params.h"

namespace fluid_rt {
namespace emu {

int causal_attention_num_splits(const CausalAttentionParams& p);  // cuda_plan.h's choice
void causal_attention(const CausalAttentionParams& p);            // needs partials when split

int token_entropy_splits(int64_t rows, int64_t vocab);
size_t token_entropy_workspace_bytes(int64_t rows, int splits);
void token_entropy(const TokenEntropyParams& p, int splits, void* workspace);

void rms_norm(const RmsNormParams& p);

void draft_commit(const DraftCommitParams& p);
void verify_commit(const VerifyCommitParams& p);

// Test kernels of the emulator itself (csrc/emu/selftest.cpp): `what` picks one.
//   "block_sum": out[0] = sum of x[0..n) by a 256-thread block through shared memory (n <= 256),
//                with the barrier between the writes and the reads unless `drop_barrier`.
//   "warp_sum":  out[i] = sum of x over the warp of lane i, by __shfl_xor_sync (n == 64).
//   "overrun":   writes out[0..n] (one past the end).
//   "divergent": lane 0 skips a __shfl_sync the other lanes make.
void selftest(const char* what, const float* x, int64_t n, float* out, bool drop_barrier);

}  // namespace emu
}  // namespace fluid_rt
