// token_entropy's CUDA kernels compiled as C++ for the emulator (csrc/emu/launchers.h).
#include "emu/launchers.h"
#include "entropy/cuda_kernels.cuh"

namespace fluid_rt {
namespace emu {

int token_entropy_splits(int64_t rows, int64_t vocab) {
  return token_entropy_splits_for_sms(rows, vocab, get_config().num_sms);
}

size_t token_entropy_workspace_bytes(int64_t rows, int splits) {
  return static_cast<size_t>(rows) * static_cast<size_t>(splits) * kEntropyStatsBytes;
}

void token_entropy(const TokenEntropyParams& p, int splits, void* workspace) {
  if (token_entropy_launch(p, splits, workspace, nullptr) != 0)
    throw EmuError("emu: token_entropy: launch refused");
}

}  // namespace emu
}  // namespace fluid_rt
