// CPU rope: the row kernel is rope.isa.cpp's, one copy per CPU path; rows split over OpenMP threads
// when there are many (prefill).
#include "common/isa.h"
#include "rope/params.h"

namespace fluid_rt {

FLUID_RT_DECLARE_ISA(void, rope_rows, (const RopeParams& p, int64_t r0, int64_t r1))

void rope_cpu(const RopeParams& p) {
  const auto rows = FLUID_RT_ISA_PICK(rope_rows);
  const bool parallel = p.rows > 1 && p.rows * p.heads * p.head_dim >= (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < p.rows; ++r) rows(p, r, r + 1);
}

}  // namespace fluid_rt
