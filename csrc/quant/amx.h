// The quantized matmul's AMX-INT8 tile (Intel Sapphire Rapids and later), for the avx512 copy of
// kernel.isa.cpp (the only file that includes it).
//
// Why: a call of many rows (a batch of elastic forwards, a prefill) spends its time in the integer
// dot products, and one tile instruction does 16 rows x 16 columns x 32 k of them, where
// AVX512-VNNI needs 8 (512-bit) per row. The weights stay in kernel.isa.cpp's layout: a block's
// quads of two 8-column groups, side by side, are exactly the rows of a B tile (16 columns x 4 k
// per 64 bytes), built in 512-byte buffers (4-bit quants unpacked on the way). x's quantized rows are
// the A tile, loaded in place. The tile's int32 sums are the same integers the VNNI code adds up,
// and each row's float steps (scale, accumulate in k order, the min term) are the VNNI code's, lane
// for lane, so this tile gives the VNNI path's results bit for bit (tested), and a row's result still
// depends on that row alone.
#pragma once
#include "common/isa.h"
#if FLUID_RT_ISA_AVX512
#include <type_traits>

#include "common/amx.h"
#include "quant/activations.h"
#include "quant/group_pair.h"
#include "quant/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

// Calls of this many rows or more run on AMX tiles: below it a tile's fixed cost per block (B fill,
// tile loads, C store) outweighs what it saves over the 512-bit pair tile (a SmolLM2 forward:
// x0.95 at 4 rows, x1.00-1.03 at 7, x1.06 at 8, x1.12 at 12; paired A/B).
constexpr int kAmxMinRows = 8;
constexpr int kAmxMaxRows = 16;             // rows of an A or C tile
constexpr int kAmxCols = 2 * kQuantGroup;   // columns of a C tile: two column groups
constexpr int64_t kAmxBTileBytes = 8 * 64;  // a block's B tile: 8 quads x 16 columns x 4 k

// The tile shapes for `rows` rows, two of each (slots 0 and 1, so that one block's tile work runs
// while the previous block's sums are scaled): C rows x 64 bytes (tmm0, tmm1); A rows x (k per scale)
// bytes (tmm2, tmm3); B (k per scale / 4) x 64 bytes (tmm4, tmm5).
template <QuantFormat F>
inline void amx_configure(int rows) {
  constexpr int k_per_scale = kQuantBlock / quant_scales_per_block(F);
  AmxConfig cfg;
  for (int slot = 0; slot < 2; ++slot)
    cfg.set(slot, rows, kAmxCols * 4)
        .set(2 + slot, rows, k_per_scale)
        .set(4 + slot, k_per_scale / 4, kAmxCols * 4);
  cfg.load();
}

// B tile rows t = 0..7 of one block: quad t of group 0's block, then quad t of group 1's.
template <QuantFormat F>
inline void amx_fill_b(const uint8_t* blk0, const uint8_t* blk1, uint8_t* b) {
  if constexpr (quant_is_u4(F)) {
    const __m512i low = _mm512_set1_epi8(0x0F);
    for (int c = 0; c < 4; ++c) {  // byte t of packed row c: quad c (low nibble), quad c + 4 (high)
      const __m512i raw = join256(blk0 + 32 * c, blk1 + 32 * c);
      _mm512_store_si512(b + 64 * c, _mm512_and_si512(raw, low));
      _mm512_store_si512(b + 64 * (c + 4), _mm512_and_si512(_mm512_srli_epi16(raw, 4), low));
    }
  } else {
    for (int t = 0; t < 8; ++t) _mm512_store_si512(b + 64 * t, join256(blk0 + 32 * t, blk1 + 32 * t));
  }
}

// B tiles of every block of two column groups, 512 bytes each, filled before any is loaded: a tile
// load right after the stores that wrote its bytes waits for them to reach the cache.
template <QuantFormat F>
inline void amx_fill_b_all(const uint8_t* group0, const uint8_t* group1, int64_t nb, uint8_t* b) {
  constexpr int64_t bb = quant_block_bytes(F);
  for (int64_t i = 0; i < nb; ++i) {
    prefetch_quant_block<F>(group0 + i * bb);
    prefetch_quant_block<F>(group1 + i * bb);
    amx_fill_b<F>(group0 + i * bb, group1 + i * bb, b + i * kAmxBTileBytes);
  }
}

// One block's tile work in slot S: per scale (two for kS8F32x2) C = A . B, stored to c[h]
// (int32 [rows][16]).
template <QuantFormat F, int S>
inline void amx_block_sums(const uint8_t* b, const int8_t* x, int64_t K,
                           int32_t (*c)[kAmxMaxRows * kAmxCols]) {
  constexpr int spb = static_cast<int>(quant_scales_per_block(F)), k_per_scale = kQuantBlock / spb;
  for (int h = 0; h < spb; ++h) {
    FLUID_RT_AMX_ZERO(S);
    FLUID_RT_AMX_LOAD(S + 2, x + h * k_per_scale, K);
    FLUID_RT_AMX_LOAD(S + 4, b + h * (k_per_scale / 4) * 64, 64);
    if constexpr (quant_is_u4(F))
      FLUID_RT_AMX_DPBSUD(S, S + 2, S + 4);
    else
      FLUID_RT_AMX_DPBSSD(S, S + 2, S + 4);
    FLUID_RT_AMX_STORE(S, c[h], kAmxCols * 4);
  }
}

// acc[r] += block b's sums c scaled by d_w d_x (per scale), then the min term: kernel.isa.cpp's
// `fold` and `add_min`, lane for lane.
template <QuantFormat F, int R>
inline void amx_fold(__m512* acc, const uint8_t* blk0, const uint8_t* blk1, const QuantizedRows& xq,
                     int64_t row0, int64_t b, const int32_t (*c)[kAmxMaxRows * kAmxCols]) {
  const int64_t nb = xq.nb;
  for (int h = 0; h < static_cast<int>(quant_scales_per_block(F)); ++h) {
    const __m512 dw = pair_weight_scales<F>(blk0, blk1, h);
    for (int r = 0; r < R; ++r)
      acc[r] = fold16(acc[r], _mm512_load_si512(c[h] + kAmxCols * r), dw, xq.dx[(row0 + r) * nb + b]);
  }
  if constexpr (quant_has_min(F)) {
    const __m512 mw = pair_mins<F>(blk0, blk1);
    for (int r = 0; r < R; ++r) acc[r] = add_min16(acc[r], mw, xq.sx[(row0 + r) * nb + b]);
  }
}

// Rows row0 .. row0 + R - 1 times two column groups (16 columns) into out[R][16], from their B
// tiles (amx_fill_b_all); the tiles must be configured for R rows. Blocks alternate between the
// two tile slots, and block b + 1's tile work is issued before block b's sums are scaled, so the
// two overlap.
template <QuantFormat F, int R>
void amx_tile(const uint8_t* group0, const uint8_t* group1, const uint8_t* b_tiles, int64_t nb,
              const QuantizedRows& xq, int64_t row0, float (*out)[kAmxCols]) {
  constexpr int64_t bb = quant_block_bytes(F);
  const int64_t K = nb * kQuantBlock;
  const int8_t* x = xq.xq + row0 * K;
  alignas(64) int32_t c_tile[2][2][kAmxMaxRows * kAmxCols];  // [slot][scale]
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  auto sums = [&](auto slot, int64_t b) {
    constexpr int S = decltype(slot)::value;
    amx_block_sums<F, S>(b_tiles + b * kAmxBTileBytes, x + b * kQuantBlock, K, c_tile[S]);
  };
  auto fold = [&](int slot, int64_t b) {
    amx_fold<F, R>(acc, group0 + b * bb, group1 + b * bb, xq, row0, b, c_tile[slot]);
  };
  using Slot0 = std::integral_constant<int, 0>;
  using Slot1 = std::integral_constant<int, 1>;
  sums(Slot0{}, 0);
  for (int64_t b = 0; b < nb; b += 2) {
    if (b + 1 < nb) sums(Slot1{}, b + 1);
    fold(0, b);
    if (b + 2 < nb) sums(Slot0{}, b + 2);
    if (b + 1 < nb) fold(1, b + 1);
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out[r], acc[r]);
}

// amx_tile for a run-time row count kAmxMinRows..kAmxMaxRows (balanced row tiles of a call of at
// least kAmxMinRows rows are never shorter).
template <QuantFormat F, int R = kAmxMinRows>
void amx_run_tile(const uint8_t* group0, const uint8_t* group1, const uint8_t* b_tiles, int64_t nb,
                  const QuantizedRows& xq, int64_t row0, int rows, float (*out)[kAmxCols]) {
  if constexpr (R < kAmxMaxRows) {
    if (rows != R) return amx_run_tile<F, R + 1>(group0, group1, b_tiles, nb, xq, row0, rows, out);
  }
  amx_tile<F, R>(group0, group1, b_tiles, nb, xq, row0, out);
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
#endif  // FLUID_RT_ISA_AVX512
