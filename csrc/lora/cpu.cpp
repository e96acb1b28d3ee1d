// CPU gated_lora_: the row kernel is lora.isa.cpp's, one copy per CPU path. A decode step brings a
// few mask rows per layer (~0.1M multiply-adds each): one row tile, whose output columns the
// threads split (each recomputes the small rank-wide first product); many rows split by rows.
#include "common/parallel.h"
#include "lora/params.h"

namespace fluid_rt {

void gated_lora_cpu(const GatedLoraParams& p) {
  const auto rows = FLUID_RT_ISA_PICK(gated_lora_rows);
  const int64_t pieces = lora_num_pieces(p);
  const int64_t work = p.num_rows * p.rank * (p.in + p.out);
  if (work < (1 << 16) || pieces < 4) return rows(p, 0, p.num_rows, 0, pieces);
  if (p.num_rows <= kLoraRowTile) {
#pragma omp parallel
    {
      const ItemRange share = thread_share(pieces);
      if (share.begin < share.end) rows(p, 0, p.num_rows, share.begin, share.end);
    }
    return;
  }
  // Each thread tiles its own rows (a row's result is the same in any tile).
#pragma omp parallel
  {
    const ItemRange share = thread_share(p.num_rows);
    rows(p, share.begin, share.end, 0, pieces);
  }
}

}  // namespace fluid_rt
