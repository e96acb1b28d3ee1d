// The commit family's CUDA kernels compiled as C++ for the emulator (csrc/emu/launchers.h).
#include "commit/cuda_kernels.cuh"
#include "emu/launchers.h"

namespace fluid_rt {
namespace emu {

void draft_commit(const DraftCommitParams& p) { draft_commit_launch(p, nullptr); }

void verify_commit(const VerifyCommitParams& p) { verify_commit_launch(p, nullptr); }

}  // namespace emu
}  // namespace fluid_rt
