// rms_norm on CUDA: the kernel lives in cuda_kernels.cuh (also compiled by the emulation build);
// this file instantiates it for nvcc behind the launcher of params.h.
#include "norm/cuda_kernels.cuh"

namespace fluid_rt {

int launch_rms_norm(const RmsNormParams& p, CUstream_st* stream) { return rms_norm_launch(p, stream); }

}  // namespace fluid_rt
