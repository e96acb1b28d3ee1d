// CPU gated_lora_: the row kernel is lora.isa.cpp's, one copy per CPU path. A decode step brings a
// few mask rows per layer (~0.1M multiply-adds each): threads only pay for many rows.
#include "lora/params.h"

namespace fluid_rt {

void gated_lora_cpu(const GatedLoraParams& p) {
  const auto rows = FLUID_RT_ISA_PICK(gated_lora_rows);
  const int64_t work = p.num_rows * p.rank * (p.in + p.out);
  if (p.num_rows < 2 || work < (1 << 20)) return rows(p, 0, p.num_rows);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < p.num_rows; ++r) rows(p, r, r + 1);
}

}  // namespace fluid_rt
