// One include for CUDA kernel sources (csrc/*/cuda_kernels.cuh): the real CUDA headers under nvcc,
// the emulator's stand-ins (csrc/emu/cuda_emu.h) in the C++ emulation build. Also the two
// constructs with no common spelling: dynamic shared memory and the triple-chevron launch.
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
// extern __shared__ T name[]  (dynamic shared memory of the launch)
#define FLUID_RT_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
// kernel<<<grid, block, smem, stream>>>(args...)
#define FLUID_RT_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#else
#include "emu/cuda_emu.h"
#define FLUID_RT_DYNAMIC_SHARED(T, name) FLUID_RT_EMU_DYNAMIC_SHARED(T, name)
#define FLUID_RT_LAUNCH(grid, block, smem, stream, ...) \
  FLUID_RT_EMU_LAUNCH(grid, block, smem, stream, __VA_ARGS__)
#endif
