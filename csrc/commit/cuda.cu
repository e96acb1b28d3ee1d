// The commit family on CUDA: the kernels live in cuda_kernels.cuh (also compiled by the emulation
// build); this file instantiates them for nvcc behind the launchers of params.h.
#include "commit/cuda_kernels.cuh"

namespace fluid_rt {

void launch_draft_commit(const DraftCommitParams& p, cudaStream_t stream) { draft_commit_launch(p, stream); }

void launch_verify_commit(const VerifyCommitParams& p, cudaStream_t stream) {
  verify_commit_launch(p, stream);
}

}  // namespace fluid_rt
