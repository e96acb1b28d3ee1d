// A thin float32 vector type for the kernels in `*.isa.cpp` files (csrc/common/isa.h): one kernel
// source, compiled once per CPU path, gets the path's natural vector:
//
//   avx512    16 lanes, __m512 (masks are __mmask16)
//   avx2       8 lanes, __m256 (masks are all-ones lanes)
//   portable   4 lanes, a GCC/Clang generic vector (SSE2 on x86-64, NEON on aarch64, scalar code
//              elsewhere): no intrinsics, so it builds for any target.
//
// Kernels are written against VecF / MaskF / VecI and kLanes only; they pick their blocking from
// kLanes (e.g. keys per score step = 2 * kLanes). Semantics shared by every path:
//   vmax(a, b) = a > b ? a : b   (x86 maxps: b when either is NaN)
//   a > b, a == b are ordered compares (false with NaN); unordered(a, b) is true with a NaN.
//   exponent_bits(t) = the float whose bits are t's shifted left by 23: t's low mantissa bits become
//   the exponent field (csrc/common/vexp.h builds 2^n from them).
#pragma once

#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "common/isa.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

#if FLUID_RT_ISA == 2
// ---------------------------------------------------------------------------------------- avx512
constexpr int kLanes = 16;
struct VecF {
  __m512 v;
};
struct VecI {
  __m512i v;
};
struct MaskF {
  __mmask16 m;
};

inline VecF vzero() { return {_mm512_setzero_ps()}; }
inline VecF vset1(float x) { return {_mm512_set1_ps(x)}; }
inline VecF vload(const float* p) { return {_mm512_loadu_ps(p)}; }
inline void vstore(float* p, VecF a) { _mm512_storeu_ps(p, a.v); }
inline MaskF first_lanes(int64_t n) {
  return {static_cast<__mmask16>(n >= 16 ? 0xffff : n <= 0 ? 0 : (1u << n) - 1)};
}
inline VecF vload_first(const float* p, int64_t n) { return {_mm512_maskz_loadu_ps(first_lanes(n).m, p)}; }
inline void vstore_first(float* p, VecF a, int64_t n) { _mm512_mask_storeu_ps(p, first_lanes(n).m, a.v); }
inline VecF operator+(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
inline VecF operator-(VecF a, VecF b) { return {_mm512_sub_ps(a.v, b.v)}; }
inline VecF operator*(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
inline VecF operator/(VecF a, VecF b) { return {_mm512_div_ps(a.v, b.v)}; }
inline VecF fma(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }    // a * b + c
inline VecF fnma(VecF a, VecF b, VecF c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a * b
inline VecF vmax(VecF a, VecF b) { return {_mm512_max_ps(a.v, b.v)}; }
inline MaskF operator>(VecF a, VecF b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_GT_OQ)}; }
inline MaskF operator==(VecF a, VecF b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ)}; }
inline MaskF unordered(VecF a, VecF b) { return {_mm512_cmp_ps_mask(a.v, b.v, _CMP_UNORD_Q)}; }
inline MaskF operator|(MaskF a, MaskF b) { return {static_cast<__mmask16>(a.m | b.m)}; }
inline MaskF operator&(MaskF a, MaskF b) { return {static_cast<__mmask16>(a.m & b.m)}; }
inline bool any(MaskF a) { return a.m != 0; }
inline MaskF no_lanes() { return {0}; }
inline VecF select(MaskF m, VecF a, VecF b) { return {_mm512_mask_mov_ps(b.v, m.m, a.v)}; }  // m ? a : b
inline float reduce_add(VecF a) { return _mm512_reduce_add_ps(a.v); }
inline float reduce_max(VecF a) { return _mm512_reduce_max_ps(a.v); }
inline VecF exponent_bits(VecF t) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t.v), 23))};
}
inline float first_lane(VecF a) { return _mm512_cvtss_f32(a.v); }

inline VecI iset1(int32_t x) { return {_mm512_set1_epi32(x)}; }
inline VecI iota() { return {_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)}; }
inline VecI operator+(VecI a, VecI b) { return {_mm512_add_epi32(a.v, b.v)}; }
inline VecI select(MaskF m, VecI a, VecI b) { return {_mm512_mask_mov_epi32(b.v, m.m, a.v)}; }
inline void istore(int32_t* p, VecI a) { _mm512_storeu_si512(p, a.v); }

// 16-bit rows: bf16 is the top half of a float32; fp16 by vcvtph2ps.
inline VecF widen_bf16(__m256i h) {
  return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))};
}
inline VecF load_bf16(const uint16_t* p) {
  return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline VecF load_fp16(const uint16_t* p) {
  return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
inline __m256i narrow_bf16(VecF a) {  // round to nearest even; NaN stays a (quiet) NaN
  const __m512i bits = _mm512_castps_si512(a.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  const __mmask16 nan = _mm512_cmp_ps_mask(a.v, a.v, _CMP_UNORD_Q);
  r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}
inline void store_bf16(uint16_t* p, VecF a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(a));
}
inline void store_fp16(uint16_t* p, VecF a) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT));
}
inline VecF round_bf16(VecF a) { return widen_bf16(narrow_bf16(a)); }
inline VecF round_fp16(VecF a) { return {_mm512_cvtph_ps(_mm512_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT))}; }

// 16 x 16 transpose: rows r[0..15] in, columns out (r[i] lane j <- old r[j] lane i).
inline void transpose(VecF* r) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  __m512 u[16];  // u[4 i + e], lane L = element 4 L + e of rows 4 i .. 4 i + 3
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int e = 0; e < 4; ++e) {
    const __m512 x0 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0x88);
    const __m512 x1 = _mm512_shuffle_f32x4(u[e], u[4 + e], 0xDD);
    const __m512 y0 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0x88);
    const __m512 y1 = _mm512_shuffle_f32x4(u[8 + e], u[12 + e], 0xDD);
    r[e].v = _mm512_shuffle_f32x4(x0, y0, 0x88);
    r[8 + e].v = _mm512_shuffle_f32x4(x0, y0, 0xDD);
    r[4 + e].v = _mm512_shuffle_f32x4(x1, y1, 0x88);
    r[12 + e].v = _mm512_shuffle_f32x4(x1, y1, 0xDD);
  }
}

#elif FLUID_RT_ISA == 1
// ------------------------------------------------------------------------------------------ avx2
constexpr int kLanes = 8;
struct VecF {
  __m256 v;
};
struct VecI {
  __m256i v;
};
struct MaskF {
  __m256 m;
};

inline VecF vzero() { return {_mm256_setzero_ps()}; }
inline VecF vset1(float x) { return {_mm256_set1_ps(x)}; }
inline VecF vload(const float* p) { return {_mm256_loadu_ps(p)}; }
inline void vstore(float* p, VecF a) { _mm256_storeu_ps(p, a.v); }
inline __m256i first_lanes_i(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 0   ? 0
                                                               : n > 8 ? 8
                                                                       : n)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline MaskF first_lanes(int64_t n) { return {_mm256_castsi256_ps(first_lanes_i(n))}; }
inline VecF vload_first(const float* p, int64_t n) { return {_mm256_maskload_ps(p, first_lanes_i(n))}; }
inline void vstore_first(float* p, VecF a, int64_t n) { _mm256_maskstore_ps(p, first_lanes_i(n), a.v); }
inline VecF operator+(VecF a, VecF b) { return {_mm256_add_ps(a.v, b.v)}; }
inline VecF operator-(VecF a, VecF b) { return {_mm256_sub_ps(a.v, b.v)}; }
inline VecF operator*(VecF a, VecF b) { return {_mm256_mul_ps(a.v, b.v)}; }
inline VecF operator/(VecF a, VecF b) { return {_mm256_div_ps(a.v, b.v)}; }
inline VecF fma(VecF a, VecF b, VecF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
inline VecF fnma(VecF a, VecF b, VecF c) { return {_mm256_fnmadd_ps(a.v, b.v, c.v)}; }
inline VecF vmax(VecF a, VecF b) { return {_mm256_max_ps(a.v, b.v)}; }
inline MaskF operator>(VecF a, VecF b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_GT_OQ)}; }
inline MaskF operator==(VecF a, VecF b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ)}; }
inline MaskF unordered(VecF a, VecF b) { return {_mm256_cmp_ps(a.v, b.v, _CMP_UNORD_Q)}; }
inline MaskF operator|(MaskF a, MaskF b) { return {_mm256_or_ps(a.m, b.m)}; }
inline MaskF operator&(MaskF a, MaskF b) { return {_mm256_and_ps(a.m, b.m)}; }
inline bool any(MaskF a) { return _mm256_movemask_ps(a.m) != 0; }
inline MaskF no_lanes() { return {_mm256_setzero_ps()}; }
inline VecF select(MaskF m, VecF a, VecF b) { return {_mm256_blendv_ps(b.v, a.v, m.m)}; }
inline float reduce_add(VecF a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float reduce_max(VecF a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline VecF exponent_bits(VecF t) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t.v), 23))};
}
inline float first_lane(VecF a) { return _mm256_cvtss_f32(a.v); }

inline VecI iset1(int32_t x) { return {_mm256_set1_epi32(x)}; }
inline VecI iota() { return {_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)}; }
inline VecI operator+(VecI a, VecI b) { return {_mm256_add_epi32(a.v, b.v)}; }
inline VecI select(MaskF m, VecI a, VecI b) {
  return {_mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(b.v), _mm256_castsi256_ps(a.v), m.m))};
}
inline void istore(int32_t* p, VecI a) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), a.v); }

inline VecF widen_bf16(__m128i h) {
  return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))};
}
inline VecF load_bf16(const uint16_t* p) {
  return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
inline VecF load_fp16(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
inline __m128i narrow_bf16(VecF a) {
  const __m256i bits = _mm256_castps_si256(a.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_add_epi32(bits, _mm256_add_epi32(_mm256_set1_epi32(0x7fff), lsb));
  const __m256 nan = _mm256_cmp_ps(a.v, a.v, _CMP_UNORD_Q);
  r = _mm256_castps_si256(_mm256_blendv_ps(
      _mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_or_si256(bits, _mm256_set1_epi32(0x400000))), nan));
  r = _mm256_srli_epi32(r, 16);
  // pack the 8 u32 (each < 2^16) to u16: packus works per 128-bit half, then gather the halves.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  return _mm256_castsi256_si128(packed);
}
inline void store_bf16(uint16_t* p, VecF a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow_bf16(a));
}
inline void store_fp16(uint16_t* p, VecF a) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT));
}
inline VecF round_bf16(VecF a) { return widen_bf16(narrow_bf16(a)); }
inline VecF round_fp16(VecF a) { return {_mm256_cvtph_ps(_mm256_cvtps_ph(a.v, _MM_FROUND_TO_NEAREST_INT))}; }

// 8 x 8 transpose.
inline void transpose(VecF* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i].v, r[2 * i + 1].v);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i].v, r[2 * i + 1].v);
  }
  for (int i = 0; i < 2; ++i) {
    u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int e = 0; e < 4; ++e) {
    r[e].v = _mm256_permute2f128_ps(u[e], u[4 + e], 0x20);
    r[4 + e].v = _mm256_permute2f128_ps(u[e], u[4 + e], 0x31);
  }
}

#else
// -------------------------------------------------------------------------------------- portable
constexpr int kLanes = 4;
typedef float NativeF __attribute__((vector_size(16)));
typedef int32_t NativeI __attribute__((vector_size(16)));
typedef uint32_t NativeU __attribute__((vector_size(16)));
struct VecF {
  NativeF v;
};
struct VecI {
  NativeI v;
};
struct MaskF {
  NativeI m;
};  // -1 (true) or 0 per lane

inline VecF vzero() { return {NativeF{0.f, 0.f, 0.f, 0.f}}; }
inline VecF vset1(float x) { return {NativeF{x, x, x, x}}; }
inline VecF vload(const float* p) {
  VecF a;
  std::memcpy(&a.v, p, sizeof(a.v));
  return a;
}
inline void vstore(float* p, VecF a) { std::memcpy(p, &a.v, sizeof(a.v)); }
inline MaskF first_lanes(int64_t n) {
  const int32_t k = static_cast<int32_t>(n < 0 ? 0 : n > 4 ? 4 : n);
  return {NativeI{0, 1, 2, 3} < NativeI{k, k, k, k}};
}
inline VecF vload_first(const float* p, int64_t n) {
  VecF a = vzero();
  for (int64_t i = 0; i < n && i < kLanes; ++i) a.v[i] = p[i];
  return a;
}
inline void vstore_first(float* p, VecF a, int64_t n) {
  for (int64_t i = 0; i < n && i < kLanes; ++i) p[i] = a.v[i];
}
inline VecF operator+(VecF a, VecF b) { return {a.v + b.v}; }
inline VecF operator-(VecF a, VecF b) { return {a.v - b.v}; }
inline VecF operator*(VecF a, VecF b) { return {a.v * b.v}; }
inline VecF operator/(VecF a, VecF b) { return {a.v / b.v}; }
inline VecF fma(VecF a, VecF b, VecF c) { return {a.v * b.v + c.v}; }
inline VecF fnma(VecF a, VecF b, VecF c) { return {c.v - a.v * b.v}; }
inline VecF vmax(VecF a, VecF b) { return {a.v > b.v ? a.v : b.v}; }
inline MaskF operator>(VecF a, VecF b) { return {a.v > b.v}; }
inline MaskF operator==(VecF a, VecF b) { return {a.v == b.v}; }
inline MaskF unordered(VecF a, VecF b) { return {(a.v != a.v) | (b.v != b.v)}; }
inline MaskF operator|(MaskF a, MaskF b) { return {a.m | b.m}; }
inline MaskF operator&(MaskF a, MaskF b) { return {a.m & b.m}; }
inline bool any(MaskF a) { return (a.m[0] | a.m[1] | a.m[2] | a.m[3]) != 0; }
inline MaskF no_lanes() { return {NativeI{0, 0, 0, 0}}; }
inline VecF select(MaskF m, VecF a, VecF b) { return {m.m ? a.v : b.v}; }
inline float reduce_add(VecF a) { return (a.v[0] + a.v[2]) + (a.v[1] + a.v[3]); }
inline float reduce_max(VecF a) {
  const float x = a.v[0] > a.v[2] ? a.v[0] : a.v[2], y = a.v[1] > a.v[3] ? a.v[1] : a.v[3];
  return x > y ? x : y;
}
inline VecF exponent_bits(VecF t) {
  NativeU bits;
  std::memcpy(&bits, &t.v, sizeof(bits));
  bits <<= 23;
  NativeF f;
  std::memcpy(&f, &bits, sizeof(f));
  return {f};
}
inline float first_lane(VecF a) { return a.v[0]; }

inline VecI iset1(int32_t x) { return {NativeI{x, x, x, x}}; }
inline VecI iota() { return {NativeI{0, 1, 2, 3}}; }
inline VecI operator+(VecI a, VecI b) { return {a.v + b.v}; }
inline VecI select(MaskF m, VecI a, VecI b) { return {m.m ? a.v : b.v}; }
inline void istore(int32_t* p, VecI a) { std::memcpy(p, &a.v, sizeof(a.v)); }

inline VecF load_bf16(const uint16_t* p) {
  const NativeU u = {p[0], p[1], p[2], p[3]};
  const NativeU bits = u << 16;
  NativeF f;
  std::memcpy(&f, &bits, sizeof(f));
  return {f};
}
inline VecF load_fp16(const uint16_t* p) {
  return {NativeF{fp16_to_float(p[0]), fp16_to_float(p[1]), fp16_to_float(p[2]), fp16_to_float(p[3])}};
}
inline void store_bf16(uint16_t* p, VecF a) {
  for (int i = 0; i < kLanes; ++i) p[i] = float_to_bf16(a.v[i]);
}
inline void store_fp16(uint16_t* p, VecF a) {
  for (int i = 0; i < kLanes; ++i) p[i] = float_to_fp16(a.v[i]);
}
inline VecF round_bf16(VecF a) {
  uint16_t h[kLanes];
  store_bf16(h, a);
  return load_bf16(h);
}
inline VecF round_fp16(VecF a) {
  uint16_t h[kLanes];
  store_fp16(h, a);
  return load_fp16(h);
}

// 4 x 4 transpose.
inline void transpose(VecF* r) {
  const VecF a = r[0], b = r[1], c = r[2], d = r[3];
  for (int i = 0; i < 4; ++i) r[i].v = NativeF{a.v[i], b.v[i], c.v[i], d.v[i]};
}
#endif

// ---------------------------------------------------------------------------- dtype-generic I/O
// Load / store kLanes elements at base[i] of a row of the given dtype, as float32 (stores round to
// nearest even; NaN stays NaN).
template <DType D>
inline VecF load_as(const void* base, int64_t i) {
  if constexpr (D == DType::kFloat32)
    return vload(static_cast<const float*>(base) + i);
  else if constexpr (D == DType::kBFloat16)
    return load_bf16(static_cast<const uint16_t*>(base) + i);
  else
    return load_fp16(static_cast<const uint16_t*>(base) + i);
}

template <DType D>
inline void store_as(void* base, int64_t i, VecF a) {
  if constexpr (D == DType::kFloat32)
    vstore(static_cast<float*>(base) + i, a);
  else if constexpr (D == DType::kBFloat16)
    store_bf16(static_cast<uint16_t*>(base) + i, a);
  else
    store_fp16(static_cast<uint16_t*>(base) + i, a);
}

// The first n (< kLanes) elements; the other lanes are 0. Tails only: goes through a small buffer.
template <DType D>
inline VecF load_first_as(const void* base, int64_t i, int64_t n) {
  if constexpr (D == DType::kFloat32) {
    return vload_first(static_cast<const float*>(base) + i, n);
  } else {
    uint16_t h[kLanes] = {};
    std::memcpy(h, static_cast<const uint16_t*>(base) + i, static_cast<size_t>(n) * 2);
    return load_as<D>(h, 0);
  }
}

template <DType D>
inline void store_first_as(void* base, int64_t i, VecF a, int64_t n) {
  if constexpr (D == DType::kFloat32) {
    vstore_first(static_cast<float*>(base) + i, a, n);
  } else {
    uint16_t h[kLanes];
    store_as<D>(h, 0, a);
    std::memcpy(static_cast<uint16_t*>(base) + i, h, static_cast<size_t>(n) * 2);
  }
}

// n (1 .. kLanes) elements at base[i]: a whole vector, or the first lanes of one (a row's tail).
template <DType D>
inline VecF load_n(const void* base, int64_t i, int64_t n) {
  return n == kLanes ? load_as<D>(base, i) : load_first_as<D>(base, i, n);
}

template <DType D>
inline void store_n(void* base, int64_t i, VecF v, int64_t n) {
  if (n == kLanes)
    store_as<D>(base, i, v);
  else
    store_first_as<D>(base, i, v, n);
}

// x rounded to dtype D and back (the rounding torch applies between two ops in that dtype).
template <DType D>
inline VecF round_as(VecF a) {
  if constexpr (D == DType::kFloat32)
    return a;
  else if constexpr (D == DType::kBFloat16)
    return round_bf16(a);
  else
    return round_fp16(a);
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
