// rope: rotary position embedding (rotate-half, as HF Llama), in place on the q and k heads of a
// fused projection. For each row (token) and head:
//   x <- x * cos + swap_halves(x) * sin
// with the row's cos, sin [D] tables, sin's first half already negated (fluid_rt.model.rope_tables),
// so this is HF's q * cos + rotate_half(q) * sin. Each product and the sum are rounded to x's
// dtype, as HF's three separate tensor ops do (no fused multiply-add: this file is compiled with
// -ffp-contract=off).
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace fluid_rt {

struct RopeParams {
  void* x = nullptr;              // row r, head h, element d at x[r * row_stride + h * head_dim + d]
  int64_t row_stride = 0;         // in elements
  const void* cos = nullptr;      // [rows, head_dim], contiguous
  const void* sin = nullptr;      // [rows, head_dim], contiguous
  DType dtype = DType::kFloat32;  // of x, cos and sin
  int64_t rows = 0, heads = 0, head_dim = 0;  // head_dim even
};

void rope_cpu(const RopeParams& p);

}  // namespace fluid_rt
