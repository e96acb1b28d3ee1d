// Two 8-column groups of the packed quantized weight (params.h) as one 16-column 512-bit vector,
// for the avx512 copy of kernel.isa.cpp: the 512-bit VNNI pair tile and the AMX tile (amx.h) both
// read a block of each group side by side.
#pragma once
#include "common/isa.h"
#if FLUID_RT_ISA_AVX512
#include <cstdint>

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

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
#endif  // FLUID_RT_ISA_AVX512
