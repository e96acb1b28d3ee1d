// causal_attention on CUDA: the launcher (csrc/attention/cuda.cu) and its plan (cuda_plan.h).
// Torch-free; included by the binding only in CUDA builds.
#pragma once
#include <cuda_runtime_api.h>

#include "attention/cuda_plan.h"

namespace fluid_rt {

// Writes k_new/v_new into the caches (when given), then the attention (and the split combine when
// p.num_splits > 1, which needs p.partial_out / p.partial_lse sized for num_splits). Asynchronous
// on `stream`; returns the launch error, if any.
cudaError_t launch_causal_attention(const CausalAttentionParams& p, cudaStream_t stream);

}  // namespace fluid_rt
