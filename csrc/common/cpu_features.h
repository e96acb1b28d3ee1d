// Run-time CPU feature checks, so one build picks the widest vector path the machine has.
#pragma once

namespace fluid_rt {

// True when the CPU (and the OS) support the AVX-512 F/BW/VL + FMA subset our kernels use.
bool cpu_has_avx512();

// True when the CPU also has AVX512-BF16 (vdpbf16ps: bfloat16 pair dot products into float32).
bool cpu_has_avx512_bf16();

// cpu_has_avx512(), unless FLUID_RT_CPU_PORTABLE=1 is set: then every kernel takes its portable
// path (the tests cover the fallback this way). Read per call, so a test can flip it in-process.
bool cpu_use_avx512();

// Number of OpenMP threads the CPU kernels may use (1 without OpenMP).
int cpu_max_threads();

}  // namespace fluid_rt
