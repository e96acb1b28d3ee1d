// causal_attention on CUDA: the kernels live in cuda_kernels.cuh (also compiled by the emulation
// build); this file instantiates them for nvcc behind the launcher of cuda_launch.h.
#include "attention/cuda_kernels.cuh"
#include "attention/cuda_launch.h"

namespace fluid_rt {

cudaError_t launch_causal_attention(const CausalAttentionParams& p, cudaStream_t stream) {
  return causal_attention_launch(p, stream);
}

}  // namespace fluid_rt
