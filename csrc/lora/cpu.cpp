// CPU gated_lora_: the row kernel is lora.isa.cpp's, one copy per CPU path. A decode step brings a
// few mask rows per layer (~0.1M multiply-adds each): threads only pay for many rows.
#include "common/parallel.h"
#include "lora/params.h"

namespace fluid_rt {

void gated_lora_cpu(const GatedLoraParams& p) {
  const auto rows = FLUID_RT_ISA_PICK(gated_lora_rows);
  const int64_t work = p.num_rows * p.rank * (p.in + p.out);
  if (p.num_rows < 2 || work < (1 << 20)) return rows(p, 0, p.num_rows);
  // Each thread tiles its own rows (a row's result is the same in any tile).
#pragma omp parallel
  {
    const ItemRange share = thread_share(p.num_rows);
    rows(p, share.begin, share.end);
  }
}

}  // namespace fluid_rt
