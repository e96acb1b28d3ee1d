// Activation rows quantized for the int8 dot products of the quantized matmul (params.h): per row
// and block of 32, d_x = max|x| / 127, xq = round_half_even(x / d_x), s_x = d_x * sum(xq).
// The kernels broadcast xq's four k of a quad to every column lane straight from these rows.
// Included by kernel.isa.cpp alone, so it is compiled once per CPU path, in that path's namespace.
// Every path quantizes bit for bit alike: the same float32 products, rounded half to even.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/vexp.h"
#include "quant/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

struct QuantizedRows {
  int8_t* xq = nullptr;      // [M][K]
  float* dx = nullptr;       // [M][nb]
  float* sx = nullptr;       // [M][nb]
  int32_t* sum16 = nullptr;  // [M][2 nb]: sum(xq) over each 16 k (int8 weights offset by 128 need it)
  int64_t nb = 0;
};

// Row m's K inputs as float32: x, or silu(gate) * up. For bfloat16 models silu's output and the
// product are rounded to bfloat16, as torch's two ops round them.
template <DType D>
inline void load_input_row(const QuantLinearParams& p, int64_t m, float* out) {
  const char* x = static_cast<const char*>(p.x) + m * p.x_row_stride * (D == DType::kFloat32 ? 4 : 2);
  for (int64_t k = 0; k < p.K; k += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, p.K - k);
    VecF a = load_n<D>(x, k, n);
    if (p.silu_and_mul) a = round_as<D>(round_as<D>(silu(a)) * load_n<D>(x, p.K + k, n));
    store_n<DType::kFloat32>(out, k, a, n);
  }
}

// Whether a block with this max |x| has nonzero quants (not for zero, infinite or NaN blocks).
inline bool quantizable(float amax) { return std::isfinite(amax) && amax > 0.f; }

// A block's scales from its max |x| (NaN if the block holds one) and its integer sum.
inline void activation_scales(float amax, int32_t sum, float* dx, float* sx) {
  const bool finite = quantizable(amax);
  // A zero block stays 0 * dot = 0; inf / NaN blocks carry d = inf / NaN into their outputs.
  dx[0] = finite ? amax / 127.f : (amax == 0.f ? 0.f : amax);
  sx[0] = finite ? dx[0] * static_cast<float>(sum) : dx[0];
}

#if FLUID_RT_ISA_AVX2

inline float max_lane(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
}

inline int32_t sum_lanes(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1)));
}

// One block of 32: four vectors of 8; cvtps_epi32 rounds half to even, as nearbyint.
inline void quantize_block(const float* v, int8_t* q, float* dx, float* sx, int32_t* sum16) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 x[4], amax = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  for (int i = 0; i < 4; ++i) {
    x[i] = _mm256_loadu_ps(v + 8 * i);
    amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, x[i]));  // maxps drops NaNs: tracked apart
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(x[i], x[i], _CMP_UNORD_Q));
  }
  const float m = _mm256_movemask_ps(nan) ? std::numeric_limits<float>::quiet_NaN() : max_lane(amax);
  __m256i xi[4];
  for (int i = 0; i < 4; ++i)
    xi[i] = quantizable(m) ? _mm256_cvtps_epi32(_mm256_mul_ps(x[i], _mm256_set1_ps(127.f / m)))
                           : _mm256_setzero_si256();
  sum16[0] = sum_lanes(_mm256_add_epi32(xi[0], xi[1]));
  sum16[1] = sum_lanes(_mm256_add_epi32(xi[2], xi[3]));
  // packs interleave per 128-bit lane: dword j of the packed bytes holds four values of vector
  // j % 4 (its first four for j < 4); the permutation puts them back in order.
  const __m256i bytes =
      _mm256_packs_epi16(_mm256_packs_epi32(xi[0], xi[1]), _mm256_packs_epi32(xi[2], xi[3]));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(q),
                      _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  activation_scales(m, sum16[0] + sum16[1], dx, sx);
}

#else

inline void quantize_block(const float* v, int8_t* q, float* dx, float* sx, int32_t* sum16) {
  float amax = 0.f;
  bool nan = false;
  for (int i = 0; i < kQuantBlock; ++i) {
    const float a = std::fabs(v[i]);
    amax = a > amax ? a : amax;
    nan = nan || v[i] != v[i];
  }
  if (nan) amax = std::numeric_limits<float>::quiet_NaN();
  const bool ok = quantizable(amax);
  const float id = ok ? 127.f / amax : 0.f;
  sum16[0] = sum16[1] = 0;
  for (int i = 0; i < kQuantBlock; ++i) {
    const int qi = ok ? static_cast<int>(std::nearbyint(v[i] * id)) : 0;  // |v id| <= 127
    q[i] = static_cast<int8_t>(qi);
    sum16[i / 16] += qi;
  }
  activation_scales(amax, sum16[0] + sum16[1], dx, sx);
}

#endif

// Quantize one row of K floats (K % 32 == 0) into one row of each QuantizedRows array.
inline void quantize_row(const float* x, int64_t nb, int8_t* xq, float* dx, float* sx, int32_t* sum16) {
  for (int64_t b = 0; b < nb; ++b)
    quantize_block(x + b * kQuantBlock, xq + b * kQuantBlock, dx + b, sx + b, sum16 + 2 * b);
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
