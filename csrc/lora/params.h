// gated_lora_: a LoRA delta added in place to chosen rows of a linear layer's output,
//   y[r] += (x'[r] @ a_t) @ b_t        for r in rows,
// where x' is x's row, or silu(gate) * up of a [gate, up] row (SwiGLU's down projection), a_t is
// [in, rank] and b_t [rank, out] (the LoRA scale folded in). The gated FLUID adapter runs it at the
// rows whose input is the mask token only; every other row of y is left untouched. Float32 math;
// y's row is widened, summed with the delta and rounded back to its dtype once.
//
// Fused projections (q/k/v, gate/up) stack P parts: a_t's columns are the parts' ranks side by side
// (rank = P part_rank) and B is [part_rank, out], part q's columns (up to part_ends[q]) taking h's
// q-th rank slice, h = x' @ a_t: the block diagonal B of the fused layer without its zeros.
// b_t holds B in pieces of kLoraPiece columns, each piece's part_rank rows contiguous
// ([pieces][part_rank][kLoraPiece], counted per part, a part's last piece zero-padded): B's rows
// are a whole output wide, and reading a column block of them row by row jumps a page per row,
// which the hardware prefetchers do not follow (the factors come from DRAM in a decode step).
// The factors may be bfloat16 (an adapter trained in it is exact there): a decode step streams
// every layer's factors once, and they are a tenth of the quantized base model's bytes in float32.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/isa.h"

namespace fluid_rt {

constexpr int64_t kLoraPiece = 64;  // columns of a b_t piece
constexpr int kLoraRowTile = 4;     // rows the kernel multiplies together (each weight load serves them)

struct GatedLoraParams {
  void* y = nullptr;  // row r at y + r * y_stride (elements), out contiguous values
  int64_t y_stride = 0;
  const void* x = nullptr;  // row r at x + r * x_stride: in values (2 * in with silu_and_mul)
  int64_t x_stride = 0;
  DType dtype = DType::kFloat32;  // of x and y: float32 or bfloat16
  const int64_t* rows = nullptr;  // num_rows distinct row indices
  int64_t num_rows = 0;
  const void* a_t = nullptr;             // [in, rank], contiguous
  const void* b_t = nullptr;             // [lora_num_pieces][rank / num_parts][kLoraPiece]
  DType factor_dtype = DType::kFloat32;  // of a_t and b_t: float32 or bfloat16
  int64_t in = 0, rank = 0, out = 0;
  const int64_t* part_ends = nullptr;  // [num_parts], increasing, the last == out; null: one part
  int64_t num_parts = 1;               // divides rank
  bool silu_and_mul = false;
};

void gated_lora_cpu(const GatedLoraParams& p);

// The second product's columns come in pieces of kLoraPiece, counted from each part's first column
// (a part's last piece may be narrower). A piece is computed the same way whichever thread takes
// it, so splitting pieces over threads changes no bit: a multiple of every path's column block.

inline int64_t lora_part_begin(const GatedLoraParams& p, int64_t q) {
  return q == 0 ? 0 : p.part_ends[q - 1];
}

inline int64_t lora_part_end(const GatedLoraParams& p, int64_t q) {
  return p.part_ends ? p.part_ends[q] : p.out;
}

inline int64_t lora_num_pieces(const GatedLoraParams& p) {
  int64_t n = 0;
  for (int64_t q = 0; q < p.num_parts; ++q)
    n += (lora_part_end(p, q) - lora_part_begin(p, q) + kLoraPiece - 1) / kLoraPiece;
  return n;
}

// Rows rows[r0 .. r1) of p, output pieces [k0, k1) of lora_num_pieces(p): one copy per CPU path
// (lora.isa.cpp).
FLUID_RT_DECLARE_ISA(void, gated_lora_rows,
                     (const GatedLoraParams& p, int64_t r0, int64_t r1, int64_t k0, int64_t k1))

}  // namespace fluid_rt
