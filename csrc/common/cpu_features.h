// Older spelling of the CPU feature queries (cpu_isa.h is the interface now).
#pragma once

#include "common/cpu_isa.h"

namespace fluid_rt {

// The CPU can run the avx512 path.
bool cpu_has_avx512();

// The avx512 path is the one in use (cpu_isa() == kAvx512).
bool cpu_use_avx512();

}  // namespace fluid_rt
