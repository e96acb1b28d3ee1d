// Run-time CPU feature checks, so one build picks the widest vector path the machine has.
#pragma once

namespace fluid_rt {

// True when the CPU (and the OS) support the AVX-512 F/BW/VL + FMA subset our kernels use.
bool cpu_has_avx512();

// Number of OpenMP threads the CPU kernels may use (1 without OpenMP).
int cpu_max_threads();

}  // namespace fluid_rt
