// Two 8-column groups of the packed quantized weight (params.h) as one 16-column 512-bit vector,
// for the avx512 copy of kernel.isa.cpp: the 512-bit VNNI pair tile and the AMX tile (amx.h) both
// read a block of each group side by side.
#pragma once
#include "common/isa.h"
#if FLUID_RT_ISA_AVX512
#include <cstdint>

#include "quant/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

// 32 bytes of group 0's block, then 32 of group 1's.
inline __m512i join256(const uint8_t* a, const uint8_t* b) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a))),
                            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)), 1);
}

// The eight float scales of each group's block at byte `offset` (float16 or float32), in column order.
inline __m512 pair_scales16(const uint8_t* blk0, const uint8_t* blk1, int offset, bool f16) {
  auto eight = [&](const uint8_t* s) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)))
               : _mm256_loadu_ps(reinterpret_cast<const float*>(s));
  };
  return _mm512_insertf32x8(_mm512_castps256_ps512(eight(blk0 + offset)), eight(blk1 + offset), 1);
}

template <QuantFormat F>
constexpr bool scales_are_f16() {
  return F == QuantFormat::kU4F16 || F == QuantFormat::kS8F16;
}

// Weight scale h (0, or 0..1 for kS8F32x2) of block pair (blk0, blk1), 16 columns.
template <QuantFormat F>
inline __m512 pair_weight_scales(const uint8_t* blk0, const uint8_t* blk1, int h) {
  return pair_scales16(blk0, blk1, static_cast<int>(quant_quant_bytes(F)) + 32 * h, scales_are_f16<F>());
}

// The mins of block pair (blk0, blk1) (4-bit formats), 16 columns.
template <QuantFormat F>
inline __m512 pair_mins(const uint8_t* blk0, const uint8_t* blk1) {
  constexpr bool f16 = scales_are_f16<F>();
  return pair_scales16(blk0, blk1, static_cast<int>(quant_quant_bytes(F)) + (f16 ? 16 : 32), f16);
}

// acc + float(sum) * (d_w * d_x), then (add_min16) acc + m_w * s_x: kernel.isa.cpp's `fold` and
// `add_min` on 16 columns, the same steps per lane. Every 16-column tile folds with these, which is
// why the pair tile and the AMX tile give the 8-column VNNI tiles' bits.
inline __m512 fold16(__m512 acc, __m512i sum, __m512 dw, float dx) {
  return _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc);
}
inline __m512 add_min16(__m512 acc, __m512 mw, float sx) {
  return _mm512_fmadd_ps(mw, _mm512_set1_ps(sx), acc);
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
#endif  // FLUID_RT_ISA_AVX512
