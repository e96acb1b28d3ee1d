// The per-path copies of packed_linear's kernel (packed_linear.isa.cpp, compiled once per CPU path;
// csrc/common/isa.h). cpu.cpp picks the one for cpu_isa().
#pragma once

#include "common/isa.h"
#include "linear/params.h"

namespace fluid_rt {

// y = x @ W (+ bias) for p.M >= 1 rows (silu_and_mul included), on this copy's vectors.
FLUID_RT_DECLARE_ISA(void, packed_linear_run, (const PackedLinearParams& p))

}  // namespace fluid_rt
