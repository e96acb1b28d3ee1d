// FLUID_RT_HD marks small helpers that the host code and the CUDA kernels share (one definition of
// a rule, compiled for both sides by nvcc; plain inline functions elsewhere).
#pragma once

#ifdef __CUDACC__
#define FLUID_RT_HD __host__ __device__
#else
#define FLUID_RT_HD
#endif
