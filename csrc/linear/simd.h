// The few vector operations packed_linear's kernel needs, once per CPU path (included only by
// `*.isa.cpp` files, inside namespace FLUID_RT_ISA_NS): float32 vectors of kLanes lanes.
//   avx512: __m512 (16 lanes), masked loads and stores for a panel's tail
//   avx2:   __m256 (8 lanes), vmaskmov for the tail
//   portable: 4 floats in a struct whose loops the compiler turns into SSE / NEON registers
// A "pair word" is the 32-bit unit of a bfloat16 panel: the bf16 of k (low half) and of k + 1 (high
// half) of one column; `load_half` widens one half of kLanes of them to float32 (half 0 shifted
// left by 16, half 1 masked: exact, bfloat16 is the top half of a float32).
#pragma once
#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "common/isa.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

#if FLUID_RT_ISA_AVX512

constexpr int kLanes = 16;
using Vf = __m512;

inline __mmask16 lanes_mask(int64_t n) {
  return n >= 16 ? 0xffff : n <= 0 ? 0 : static_cast<__mmask16>((1u << n) - 1);
}
inline Vf vzero() { return _mm512_setzero_ps(); }
inline Vf vset1(float a) { return _mm512_set1_ps(a); }
inline Vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline Vf vload_first(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(lanes_mask(n), p); }
inline void vstore(float* p, Vf v) { _mm512_storeu_ps(p, v); }
inline void vstore_first(float* p, Vf v, int64_t n) { _mm512_mask_storeu_ps(p, lanes_mask(n), v); }
inline Vf vfma(Vf a, Vf b, Vf c) { return _mm512_fmadd_ps(a, b, c); }
inline Vf vadd(Vf a, Vf b) { return _mm512_add_ps(a, b); }

inline Vf widen_half(__m512i w, int half) {
  return _mm512_castsi512_ps(half == 0
                                 ? _mm512_slli_epi32(w, 16)
                                 : _mm512_and_si512(w, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}
inline Vf load_half(const uint32_t* p, int half) { return widen_half(_mm512_loadu_si512(p), half); }
inline Vf load_half_first(const uint32_t* p, int64_t n, int half) {
  return widen_half(_mm512_maskz_loadu_epi32(lanes_mask(n), p), half);
}
// bfloat16 -> float32 of the first n lanes (the bias).
inline Vf vload_bf16_first(const uint16_t* p, int64_t n) {
  const __m256i raw = _mm256_maskz_loadu_epi16(lanes_mask(n), p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
// float32 -> bfloat16 (round to nearest even, NaN stays a quiet NaN: float_to_bf16 per lane).
inline void vstore_bf16_first(uint16_t* p, Vf v, int64_t n) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(bits, 16), _mm512_set1_epi32(0x40));
  _mm256_mask_storeu_epi16(p, lanes_mask(n), _mm512_cvtepi32_epi16(r));
}

#elif FLUID_RT_ISA_AVX2

constexpr int kLanes = 8;
using Vf = __m256;

inline __m256i lanes_mask(int64_t n) {
  const int k = n >= 8 ? 8 : n <= 0 ? 0 : static_cast<int>(n);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(k), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Vf vzero() { return _mm256_setzero_ps(); }
inline Vf vset1(float a) { return _mm256_set1_ps(a); }
inline Vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline Vf vload_first(const float* p, int64_t n) { return _mm256_maskload_ps(p, lanes_mask(n)); }
inline void vstore(float* p, Vf v) { _mm256_storeu_ps(p, v); }
inline void vstore_first(float* p, Vf v, int64_t n) { _mm256_maskstore_ps(p, lanes_mask(n), v); }
inline Vf vfma(Vf a, Vf b, Vf c) { return _mm256_fmadd_ps(a, b, c); }
inline Vf vadd(Vf a, Vf b) { return _mm256_add_ps(a, b); }

inline Vf widen_half(__m256i w, int half) {
  return _mm256_castsi256_ps(half == 0
                                 ? _mm256_slli_epi32(w, 16)
                                 : _mm256_and_si256(w, _mm256_set1_epi32(static_cast<int>(0xffff0000u))));
}
inline Vf load_half(const uint32_t* p, int half) {
  return widen_half(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), half);
}
inline Vf load_half_first(const uint32_t* p, int64_t n, int half) {
  return widen_half(_mm256_maskload_epi32(reinterpret_cast<const int*>(p), lanes_mask(n)), half);
}
inline Vf vload_bf16_first(const uint16_t* p, int64_t n) {
  alignas(32) float f[8] = {};
  for (int64_t i = 0; i < n && i < 8; ++i) f[i] = bf16_to_float(p[i]);
  return _mm256_load_ps(f);
}
inline void vstore_bf16_first(uint16_t* p, Vf v, int64_t n) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff))), 16);
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  r = _mm256_blendv_epi8(r, _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40)), nan);
  alignas(32) uint32_t out[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(out), r);
  for (int64_t i = 0; i < n && i < 8; ++i) p[i] = static_cast<uint16_t>(out[i]);
}

#else  // portable: fixed-width loops the compiler vectorizes (SSE2 on x86-64, NEON on aarch64)

constexpr int kLanes = 4;
struct Vf {
  float v[kLanes];
};

inline Vf vzero() { return Vf{}; }
inline Vf vset1(float a) {
  Vf r;
  for (int i = 0; i < kLanes; ++i) r.v[i] = a;
  return r;
}
inline Vf vload(const float* p) {
  Vf r;
  std::memcpy(r.v, p, sizeof(r.v));
  return r;
}
inline Vf vload_first(const float* p, int64_t n) {
  Vf r{};
  for (int64_t i = 0; i < n && i < kLanes; ++i) r.v[i] = p[i];
  return r;
}
inline void vstore(float* p, Vf v) { std::memcpy(p, v.v, sizeof(v.v)); }
inline void vstore_first(float* p, Vf v, int64_t n) {
  for (int64_t i = 0; i < n && i < kLanes; ++i) p[i] = v.v[i];
}
inline Vf vfma(Vf a, Vf b, Vf c) {
  for (int i = 0; i < kLanes; ++i) c.v[i] += a.v[i] * b.v[i];
  return c;
}
inline Vf vadd(Vf a, Vf b) {
  for (int i = 0; i < kLanes; ++i) a.v[i] += b.v[i];
  return a;
}
inline Vf load_half(const uint32_t* p, int half) {
  Vf r;
  for (int i = 0; i < kLanes; ++i) {
    const uint32_t w = half == 0 ? p[i] << 16 : p[i] & 0xffff0000u;
    std::memcpy(&r.v[i], &w, sizeof(w));
  }
  return r;
}
inline Vf load_half_first(const uint32_t* p, int64_t n, int half) {
  Vf r{};
  for (int64_t i = 0; i < n && i < kLanes; ++i) {
    const uint32_t w = half == 0 ? p[i] << 16 : p[i] & 0xffff0000u;
    std::memcpy(&r.v[i], &w, sizeof(w));
  }
  return r;
}
inline Vf vload_bf16_first(const uint16_t* p, int64_t n) {
  Vf r{};
  for (int64_t i = 0; i < n && i < kLanes; ++i) r.v[i] = bf16_to_float(p[i]);
  return r;
}
inline void vstore_bf16_first(uint16_t* p, Vf v, int64_t n) {
  for (int64_t i = 0; i < n && i < kLanes; ++i) p[i] = float_to_bf16(v.v[i]);
}

#endif

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
