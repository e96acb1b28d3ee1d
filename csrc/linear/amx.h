// packed_linear's bfloat16 kernel on AMX-BF16 tiles (Intel Sapphire Rapids and later), for the
// avx512 copy of packed_linear.isa.cpp (the only file that includes it).
//
// Why: one tdpbf16ps multiplies 16 rows by 16 columns over 32 k; vdpbf16ps does 16 columns over 2 k
// for one row. Wide calls (prefill) used to go to oneDNN, which has these tiles too, but its
// blocking changes with the number of rows, so a prompt token's projections depended on the width
// of the forward (elastic prefill is [prompt, MASK * bs], AR prefill [prompt]): exact elastic
// decoding cannot have that. This kernel takes the packed panels as they are: 16 steps of half a
// full panel (16 columns x a pair of k = 64 bytes, 128 bytes apart) are a B tile and 32 k of a row
// of x an A tile row, both loaded in place. Every output element accumulates in its C tile over
// the k chunks in order, and the tile computes each element from its own row and column only, so a
// row's result never depends on the other rows of the call (tested bit for bit, 1..70 rows).
// Tails (the last panel narrower than 32 columns, K not a multiple of 32) are copied into
// zero-padded tiles: adding 0 x 0 changes no sum.
#pragma once
#include "common/isa.h"
#if FLUID_RT_ISA_AVX512
#include <algorithm>
#include <cstring>
#include <memory>

#include "common/amx.h"
#include "common/parallel.h"
#include "linear/params.h"
#include "linear/simd.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

constexpr int kAmxBf16Rows = 16;   // rows per A and C tile
constexpr int kAmxBf16Steps = 16;  // k pairs per chunk: an A row is 32 bfloat16, a B tile 16 pairs
constexpr int kAmxBf16TileBytes = kAmxBf16Steps * 64;

// Two row tiles (rows0 and rows1 rows; rows1 may be 0) times the two halves of a panel, so that each
// B tile loaded serves both row tiles and each A tile both halves: tmm0..3 C (row tile 0 half 0,
// 0 / 1, 1 / 0, 1 / 1: rows x 16 float32), tmm4 and tmm5 A of the two row tiles (rows x 32
// bfloat16), tmm6 and tmm7 B of the two halves (16 pairs x 16 columns).
inline void amx_bf16_configure(int rows0, int rows1) {
  AmxConfig cfg;
  cfg.set(0, rows0, 64).set(1, rows0, 64).set(4, rows0, 64);
  if (rows1 > 0) cfg.set(2, rows1, 64).set(3, rows1, 64).set(5, rows1, 64);
  cfg.set(6, kAmxBf16Steps, 64).set(7, kAmxBf16Steps, 64);
  cfg.load();
}

// The B tiles of steps [s0, s0 + n) of a panel `w` columns wide, zero-padded to 16 steps x 16
// columns per half: b[half][step][column][2].
inline void amx_bf16_pad_b(const uint8_t* panel, int64_t w, int64_t s0, int64_t n,
                           uint8_t (*b)[kAmxBf16TileBytes]) {
  std::memset(b, 0, 2 * kAmxBf16TileBytes);
  for (int half = 0; half < 2; ++half) {
    const int64_t c0 = 16 * half, cols = std::min<int64_t>(16, w - c0);
    for (int64_t i = 0; i < n && cols > 0; ++i)
      std::memcpy(b[half] + 64 * i, panel + (s0 + i) * w * 4 + c0 * 4, cols * 4);
  }
}

// y[rows, panel's columns] = C + bias, rounded once to bfloat16.
inline void amx_bf16_store(const PackedLinearParams& p, int64_t n0, int64_t w, int64_t m0, int rows,
                           const float (*c)[32]) {  // rows <= 32
  for (int half = 0; half < 2; ++half) {
    const int64_t n = n0 + 16 * half, lanes = std::min<int64_t>(16, w - 16 * half);
    if (lanes <= 0) break;
    const Vf bias = p.bias ? vload_bf16_first(static_cast<const uint16_t*>(p.bias) + n, lanes) : vzero();
    for (int r = 0; r < rows; ++r)
      vstore_bf16_first(static_cast<uint16_t*>(p.y) + (m0 + r) * p.y_row_stride + n,
                        vadd(vload(c[r] + 16 * half), bias), lanes);
  }
}

// C tiles of the row tiles (tmm0..3) += A (tmm4, tmm5) . B (tmm6, tmm7); the second row tile only
// when there is one.
inline void amx_bf16_multiply(bool two) {
  FLUID_RT_AMX_DPBF16PS(0, 4, 6);
  FLUID_RT_AMX_DPBF16PS(1, 4, 7);
  if (two) {
    FLUID_RT_AMX_DPBF16PS(2, 5, 6);
    FLUID_RT_AMX_DPBF16PS(3, 5, 7);
  }
}

// Rows [m0, m0 + rows0 + rows1) times panel q (tiles configured for rows0, rows1). a_tail: every
// row's last K % 32 values zero-padded to 32 (null when K % 32 == 0).
inline void amx_bf16_panel(const PackedLinearParams& p, int64_t q, int64_t m0, int rows0, int rows1,
                           const uint16_t* a_tail) {
  const int64_t steps = p.K / 2, chunks = steps / kAmxBf16Steps, tail = steps % kAmxBf16Steps;
  const int64_t w = linear_panel_width(p.N, q), x_stride = p.x_row_stride * 2;
  const uint8_t* panel = static_cast<const uint8_t*>(p.packed) + q * kLinearPanel * p.K * 2;
  const uint8_t* x0 = static_cast<const uint8_t*>(p.x) + m0 * x_stride;
  const uint8_t* x1 = x0 + rows0 * x_stride;
  const bool two = rows1 > 0;
  alignas(64) uint8_t b_pad[2][kAmxBf16TileBytes];
  alignas(64) float c[2 * kAmxBf16Rows][32];
  FLUID_RT_AMX_ZERO(0);
  FLUID_RT_AMX_ZERO(1);
  if (two) {  // (an unconfigured tile faults)
    FLUID_RT_AMX_ZERO(2);
    FLUID_RT_AMX_ZERO(3);
  }
  for (int64_t j = 0; j < chunks; ++j) {
    FLUID_RT_AMX_LOAD(4, x0 + j * 64, x_stride);
    if (two) FLUID_RT_AMX_LOAD(5, x1 + j * 64, x_stride);
    if (w == kLinearPanel) {
      FLUID_RT_AMX_LOAD(6, panel + j * kAmxBf16Steps * 128, 128);
      FLUID_RT_AMX_LOAD(7, panel + j * kAmxBf16Steps * 128 + 64, 128);
    } else {
      amx_bf16_pad_b(panel, w, j * kAmxBf16Steps, kAmxBf16Steps, b_pad);
      FLUID_RT_AMX_LOAD(6, b_pad[0], 64);
      FLUID_RT_AMX_LOAD(7, b_pad[1], 64);
    }
    amx_bf16_multiply(two);
  }
  if (tail) {
    FLUID_RT_AMX_LOAD(4, a_tail + m0 * 32, 64);
    if (two) FLUID_RT_AMX_LOAD(5, a_tail + (m0 + rows0) * 32, 64);
    amx_bf16_pad_b(panel, w, chunks * kAmxBf16Steps, tail, b_pad);
    FLUID_RT_AMX_LOAD(6, b_pad[0], 64);
    FLUID_RT_AMX_LOAD(7, b_pad[1], 64);
    amx_bf16_multiply(two);
  }
  FLUID_RT_AMX_STORE(0, &c[0][0], 128);
  FLUID_RT_AMX_STORE(1, &c[0][16], 128);
  if (two) {
    FLUID_RT_AMX_STORE(2, &c[rows0][0], 128);
    FLUID_RT_AMX_STORE(3, &c[rows0][16], 128);
  }
  amx_bf16_store(p, q * kLinearPanel, w, m0, rows0 + rows1, c);
}

// packed_linear for bfloat16 x (plain rows; silu_and_mul already applied) on AMX tiles: threads
// take equal shares of the panels, each panel every row tile (balanced, at most 16 rows), two at a time.
inline void packed_linear_amx_bf16(const PackedLinearParams& p, bool parallel) {
  const int64_t panels = linear_num_panels(p.N), steps = p.K / 2, tail = steps % kAmxBf16Steps;
  std::unique_ptr<uint16_t[]> a_tail;
  if (tail) {
    a_tail.reset(new uint16_t[p.M * 32]());
    for (int64_t m = 0; m < p.M; ++m)
      std::memcpy(a_tail.get() + m * 32,
                  static_cast<const uint16_t*>(p.x) + m * p.x_row_stride + (steps - tail) * 2, tail * 4);
  }
  const int64_t tiles = row_tiles(p.M, kAmxBf16Rows);
  auto tile_start = [&](int64_t t) { return row_tile_start(p.M, kAmxBf16Rows, t); };
#pragma omp parallel if (parallel)
  {
    const ItemRange share = thread_share(panels);
    int configured0 = 0, configured1 = -1;
    for (int64_t q = share.begin; q < share.end; ++q) {
      for (int64_t t = 0; t < tiles; t += 2) {
        const int64_t m0 = tile_start(t), m1 = tile_start(t + 1), m2 = t + 1 < tiles ? tile_start(t + 2) : m1;
        const int rows0 = static_cast<int>(m1 - m0), rows1 = static_cast<int>(m2 - m1);
        if (rows0 != configured0 || rows1 != configured1)
          amx_bf16_configure(configured0 = rows0, configured1 = rows1);
        amx_bf16_panel(p, q, m0, rows0, rows1, a_tail.get());
      }
    }
    if (configured0) amx_release();
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
#endif  // FLUID_RT_ISA_AVX512
