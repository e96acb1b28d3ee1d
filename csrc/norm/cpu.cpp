// CPU rms_norm (+ fused residual add): the row kernel is norm.isa.cpp's, one copy per CPU path.
// Rows are split over OpenMP threads only when there are enough of them to pay for the parallel
// region.
#include "common/isa.h"
#include "norm/params.h"

namespace fluid_rt {

FLUID_RT_DECLARE_ISA(void, rms_norm_rows, (const RmsNormParams& p, int64_t r0, int64_t r1))

void rms_norm_cpu(const RmsNormParams& p) {
  const auto rows = FLUID_RT_ISA_PICK(rms_norm_rows);
  // A parallel region costs a few microseconds: only worth it for many elements.
  const bool parallel = p.rows > 1 && p.rows * p.hidden >= (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < p.rows; ++r) rows(p, r, r + 1);
}

}  // namespace fluid_rt
