// CPU gated_lora_: the row kernel is lora.isa.cpp's, one copy per CPU path. A decode step brings a
// few mask rows per layer (~0.1M multiply-adds each): threads only pay for many rows.
#ifdef _OPENMP
#include <omp.h>
#endif

#include "lora/params.h"

namespace fluid_rt {

void gated_lora_cpu(const GatedLoraParams& p) {
  const auto rows = FLUID_RT_ISA_PICK(gated_lora_rows);
  const int64_t work = p.num_rows * p.rank * (p.in + p.out);
  if (p.num_rows < 2 || work < (1 << 20)) return rows(p, 0, p.num_rows);
  // Contiguous ranges, so that each thread still tiles its rows (a row's result is the same in any tile).
#pragma omp parallel
  {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t nt = 1, t = 0;
#endif
    rows(p, p.num_rows * t / nt, p.num_rows * (t + 1) / nt);
  }
}

}  // namespace fluid_rt
