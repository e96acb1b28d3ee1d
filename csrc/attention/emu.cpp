// causal_attention's CUDA kernels compiled as C++ for the emulator (csrc/emu/launchers.h).
#include "attention/cuda_kernels.cuh"
#include "emu/launchers.h"

namespace fluid_rt {
namespace emu {

int causal_attention_num_splits(const CausalAttentionParams& p) {
  return causal_attention_cuda_num_splits(p, get_config().num_sms);
}

void causal_attention(const CausalAttentionParams& p) {
  if (causal_attention_launch(p, nullptr) != cudaSuccess)
    throw EmuError("emu: causal_attention: launch refused");
}

}  // namespace emu
}  // namespace fluid_rt
