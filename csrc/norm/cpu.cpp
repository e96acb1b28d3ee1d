// CPU rms_norm (+ fused residual add): one pass to add and square-sum, one to scale. Rows are
// split over OpenMP threads only when there are enough of them to pay for the parallel region.
#include <cmath>

#include "common/cpu_features.h"
#include "common/lanes.h"
#include "norm/params.h"

#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
#include <immintrin.h>
#define FLUID_RT_NORM_AVX512 1
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif

namespace fluid_rt {
namespace {

// Any dtype: float math per element, rounding exactly where torch would (after the add, and the
// normed value before the weight).
float row_scalar(const RmsNormParams& p, int64_t r) {
  const int64_t H = p.hidden;
  void* x = static_cast<char*>(p.x) + r * H * (p.dtype == DType::kFloat32 ? 4 : 2);
  float ss = 0.f;
  for (int64_t i = 0; i < H; ++i) {
    float v = load_as_float(x, i, p.dtype);
    if (p.add) {
      v += load_as_float(p.add, r * p.add_row_stride + i, p.dtype);
      store_from_float(x, i, p.dtype, v);
      v = load_as_float(x, i, p.dtype);  // the rounded sum, as torch's add leaves it
    }
    ss += v * v;
  }
  return 1.f / std::sqrt(ss / static_cast<float>(H) + p.eps);
}

void scale_scalar(const RmsNormParams& p, int64_t r, float inv) {
  const int64_t H = p.hidden;
  const int64_t base = r * H;
  const size_t esize = p.dtype == DType::kFloat32 ? 4 : 2;
  const void* x = static_cast<const char*>(p.x) + base * esize;
  void* out = static_cast<char*>(p.out) + base * esize;
  for (int64_t i = 0; i < H; ++i) {
    store_from_float(out, i, p.dtype, load_as_float(x, i, p.dtype) * inv);  // normed, rounded
    const float n = load_as_float(out, i, p.dtype);
    store_from_float(out, i, p.dtype, load_as_float(p.weight, i, p.dtype) * n);
  }
}

#ifdef FLUID_RT_NORM_AVX512
// float32 rows: 16 lanes, masked tail.
AVX512_FN void row_avx512_f32(const RmsNormParams& p, int64_t r) {
  const int64_t H = p.hidden;
  float* x = static_cast<float*>(p.x) + r * H;
  const float* add = p.add ? static_cast<const float*>(p.add) + r * p.add_row_stride : nullptr;
  const float* w = static_cast<const float*>(p.weight);
  float* out = static_cast<float*>(p.out) + r * H;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < H; i += 16) {
    const __mmask16 m = first_lanes16(H - i);
    __m512 v = _mm512_maskz_loadu_ps(m, x + i);
    if (add) {
      v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, add + i));
      _mm512_mask_storeu_ps(x + i, m, v);
    }
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(H) + p.eps);
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < H; i += 16) {
    const __mmask16 m = first_lanes16(H - i);
    const __m512 n = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), vinv);
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + i), n));
  }
}

// bfloat16 rows: the float32 math of row_avx512_f32, rounding to bfloat16 where the scalar path
// (and torch) does: the residual sum, the normed value, the output.
AVX512_FN __m512 load_bf16(__mmask16 m, const uint16_t* src) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, src)), 16));
}

AVX512_FN __m256i to_bf16(__m512 v) {  // round to nearest even; NaN stays a (quiet) NaN
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), lsb));
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, _mm512_set1_epi32(0x400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16));
}

AVX512_FN __m512 round_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(to_bf16(v)), 16));
}

AVX512_FN void row_avx512_bf16(const RmsNormParams& p, int64_t r) {
  const int64_t H = p.hidden;
  uint16_t* x = static_cast<uint16_t*>(p.x) + r * H;
  const uint16_t* add = p.add ? static_cast<const uint16_t*>(p.add) + r * p.add_row_stride : nullptr;
  const uint16_t* w = static_cast<const uint16_t*>(p.weight);
  uint16_t* out = static_cast<uint16_t*>(p.out) + r * H;
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < H; i += 16) {
    const __mmask16 m = first_lanes16(H - i);
    __m512 v = load_bf16(m, x + i);
    if (add) {
      const __m256i sum = to_bf16(_mm512_add_ps(v, load_bf16(m, add + i)));
      _mm256_mask_storeu_epi16(x + i, m, sum);
      v = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(sum), 16));
    }
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  const float inv = 1.f / std::sqrt(_mm512_reduce_add_ps(acc) / static_cast<float>(H) + p.eps);
  const __m512 vinv = _mm512_set1_ps(inv);
  for (int64_t i = 0; i < H; i += 16) {
    const __mmask16 m = first_lanes16(H - i);
    const __m512 n = round_bf16(_mm512_mul_ps(load_bf16(m, x + i), vinv));
    _mm256_mask_storeu_epi16(out + i, m, to_bf16(_mm512_mul_ps(load_bf16(m, w + i), n)));
  }
}
#endif

void norm_row(const RmsNormParams& p, int64_t r, bool avx512) {
#ifdef FLUID_RT_NORM_AVX512
  if (avx512 && p.dtype == DType::kFloat32) {
    row_avx512_f32(p, r);
    return;
  }
  if (avx512 && p.dtype == DType::kBFloat16) {
    row_avx512_bf16(p, r);
    return;
  }
#endif
  (void)avx512;
  scale_scalar(p, r, row_scalar(p, r));
}

}  // namespace

void rms_norm_cpu(const RmsNormParams& p) {
  const bool avx512 = cpu_use_avx512();
  // A parallel region costs a few microseconds: only worth it for many elements.
  const bool parallel = p.rows > 1 && p.rows * p.hidden >= (1 << 16);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t r = 0; r < p.rows; ++r) norm_row(p, r, avx512);
}

}  // namespace fluid_rt
