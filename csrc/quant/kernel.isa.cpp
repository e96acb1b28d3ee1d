// The quantized matmul (params.h), compiled once per CPU path. Threads take contiguous ranges of
// 8-column groups; each group's weights are streamed once while rows run in tiles of up to
// kMaxRows, every row through the same instructions (the tile size never changes a row's result).
//   portable: scalar integer dots, the reference the vector paths must match;
//   avx2:     maddubs (u8 x s8 pairs -> int16) + madd (-> int32); int8 weights via abs/sign;
//   avx512:   AVX512-VNNI dpbusd (u8 x s8 quads -> int32) where the CPU has it, else the avx2 code.
#include <algorithm>
#include <memory>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/isa.h"
#include "quant/activations.h"
#include "quant/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

void quant_linear_run(const QuantLinearParams& p);

namespace {

constexpr int kMaxRows = FLUID_RT_ISA_AVX512 ? 6 : 4;

// The 8 (or 2 x 8) weight scales and mins of a block, in kScaleOrder.
template <QuantFormat F>
inline void block_scales(const uint8_t* blk, float* d, float* m) {
  const uint8_t* s = blk + quant_quant_bytes(F);
  const int n = F == QuantFormat::kS8F32x2 ? 16 : 8;
  if (F == QuantFormat::kU4F16 || F == QuantFormat::kS8F16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(s);
    for (int i = 0; i < 8; ++i) d[i] = fp16_to_float(h[i]);
    if (F == QuantFormat::kU4F16)
      for (int i = 0; i < 8; ++i) m[i] = fp16_to_float(h[8 + i]);
  } else {
    std::memcpy(d, s, n * sizeof(float));
    if (F == QuantFormat::kU4F32) std::memcpy(m, s + 32, 8 * sizeof(float));
  }
}

// Weight value q(column j, k) of a block as an int.
template <QuantFormat F>
inline int weight_q(const uint8_t* blk, int j, int k) {
  const int c = k / 8, i = k % 8;
  if (quant_is_u4(F)) {
    const uint8_t byte = blk[32 * c + 8 * (j % 4) + i];
    return j < 4 ? (byte & 0xF) : (byte >> 4);
  }
  return static_cast<int8_t>(blk[64 * c + 8 * j + i]);
}

// ---- portable micro-kernel ----------------------------------------------------------------------

template <QuantFormat F>
void tile_portable(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0, int rows,
                   float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int halves = quant_scales_per_block(F);
  for (int r = 0; r < rows; ++r) {
    float acc[8] = {};  // in kScaleOrder
    const int8_t* xr = xq.xexp + (row0 + r) * nb * kExpandedBlockBytes;
    const float* dx = xq.dx + (row0 + r) * nb;
    const float* sx = xq.sx + (row0 + r) * nb;
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = group + b * bb;
      float d[16], m[8];
      block_scales<F>(blk, d, m);
      const int8_t* xb = xr + b * kExpandedBlockBytes;
      for (int pos = 0; pos < 8; ++pos) {
        const int j = kScaleOrder[pos];
        for (int h = 0; h < halves; ++h) {
          int isum = 0;
          for (int k = h * 32 / halves; k < (h + 1) * 32 / halves; ++k)
            isum += weight_q<F>(blk, j, k) * xb[32 * (k / 8) + k % 8];
          const float scale = d[8 * h + pos] * dx[b];
          acc[pos] = acc[pos] + static_cast<float>(isum) * scale;
        }
        if (quant_has_min(F)) acc[pos] = acc[pos] + m[pos] * sx[b];
      }
    }
    for (int j = 0; j < 8; ++j) out[r][j] = acc[kScaleOrder[j]];
  }
}

#if FLUID_RT_ISA_AVX2

inline __m256 load_scales8(const uint8_t* s, bool f16) {
  return f16 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)))
             : _mm256_loadu_ps(reinterpret_cast<const float*>(s));
}

// acc += float(i32) * (d_w * d_x) (+ m_w * s_x): one block (or half-block) of one row.
inline __m256 fold(__m256 acc, __m256i i32, __m256 dw, float dx) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc);
}

inline void store_tile(const __m256* acc, int rows, float (*out)[kQuantGroup]) {
  const __m256i order = _mm256_setr_epi32(0, 1, 4, 5, 2, 3, 6, 7);
  for (int r = 0; r < rows; ++r) _mm256_storeu_ps(out[r], _mm256_permutevar8x32_ps(acc[r], order));
}

// ---- avx2: 4-bit weights ------------------------------------------------------------------------

template <QuantFormat F, int R>
void tile_u4_avx2(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                  float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr bool f16 = F == QuantFormat::kU4F16;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t xstride = nb * kExpandedBlockBytes;
  const int8_t* x0 = xq.xexp + row0 * xstride;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    __m256i slo[R], shi[R];  // int16 sums: 4 chunks x 2 x 15 x 127 < 2^15
    for (int r = 0; r < R; ++r) slo[r] = shi[r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      for (int r = 0; r < R; ++r) {
        const __m256i x = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(x0 + r * xstride + b * kExpandedBlockBytes + 32 * c));
        slo[r] = _mm256_add_epi16(slo[r], _mm256_maddubs_epi16(lo, x));
        shi[r] = _mm256_add_epi16(shi[r], _mm256_maddubs_epi16(hi, x));
      }
    }
    const __m256 dw = load_scales8(blk + 128, f16), mw = load_scales8(blk + 128 + (f16 ? 16 : 32), f16);
    for (int r = 0; r < R; ++r) {
      const __m256i i32 = _mm256_hadd_epi32(_mm256_madd_epi16(slo[r], ones), _mm256_madd_epi16(shi[r], ones));
      const int64_t xi = (row0 + r) * nb + b;
      acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xq.sx[xi]), fold(acc[r], i32, dw, xq.dx[xi]));
    }
  }
  store_tile(acc, R, out);
}

// ---- avx2: int8 weights (|w| x sign(x, w), since maddubs takes one unsigned operand) ------------

template <QuantFormat F, int R>
void tile_s8_avx2(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                  float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int halves = quant_scales_per_block(F);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t xstride = nb * kExpandedBlockBytes;
  const int8_t* x0 = xq.xexp + row0 * xstride;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    for (int h = 0; h < halves; ++h) {
      __m256i ilo[R], ihi[R];
      for (int r = 0; r < R; ++r) ilo[r] = ihi[r] = _mm256_setzero_si256();
      for (int c = h * 4 / halves; c < (h + 1) * 4 / halves; ++c) {
        const __m256i wlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * c));
        const __m256i whi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 64 * c + 32));
        const __m256i alo = _mm256_abs_epi8(wlo), ahi = _mm256_abs_epi8(whi);
        for (int r = 0; r < R; ++r) {
          const __m256i x = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(x0 + r * xstride + b * kExpandedBlockBytes + 32 * c));
          ilo[r] = _mm256_add_epi32(
              ilo[r], _mm256_madd_epi16(_mm256_maddubs_epi16(alo, _mm256_sign_epi8(x, wlo)), ones));
          ihi[r] = _mm256_add_epi32(
              ihi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(ahi, _mm256_sign_epi8(x, whi)), ones));
        }
      }
      const __m256 dw = load_scales8(blk + 256 + (halves == 2 ? 32 * h : 0), F == QuantFormat::kS8F16);
      for (int r = 0; r < R; ++r)
        acc[r] = fold(acc[r], _mm256_hadd_epi32(ilo[r], ihi[r]), dw, xq.dx[(row0 + r) * nb + b]);
    }
  }
  store_tile(acc, R, out);
}

#endif  // FLUID_RT_ISA_AVX2

#if FLUID_RT_ISA_AVX512
#define VNNI_FN __attribute__((target("avx512vnni")))

// The 16 int32 lanes of a zmm summed pairwise across its 256-bit halves.
VNNI_FN inline __m256i fold_halves(__m512i v) {
  return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

// ---- avx512-vnni: 4-bit weights -------------------------------------------------------------------

template <QuantFormat F, int R>
VNNI_FN void tile_u4_vnni(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                          float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr bool f16 = F == QuantFormat::kU4F16;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t xstride = nb * kExpandedBlockBytes;
  const int8_t* x0 = xq.xexp + row0 * xstride;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    __m512i ilo[R], ihi[R];
    for (int r = 0; r < R; ++r) ilo[r] = ihi[r] = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {  // chunks 2h and 2h + 1 in the two 256-bit halves
      const __m512i raw = _mm512_loadu_si512(blk + 64 * h);
      const __m512i lo = _mm512_and_si512(raw, low), hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
      for (int r = 0; r < R; ++r) {
        const __m512i x = _mm512_loadu_si512(x0 + r * xstride + b * kExpandedBlockBytes + 64 * h);
        ilo[r] = _mm512_dpbusd_epi32(ilo[r], lo, x);
        ihi[r] = _mm512_dpbusd_epi32(ihi[r], hi, x);
      }
    }
    const __m256 dw = load_scales8(blk + 128, f16), mw = load_scales8(blk + 128 + (f16 ? 16 : 32), f16);
    for (int r = 0; r < R; ++r) {
      const __m256i i32 = _mm256_hadd_epi32(fold_halves(ilo[r]), fold_halves(ihi[r]));
      const int64_t xi = (row0 + r) * nb + b;
      acc[r] = _mm256_fmadd_ps(mw, _mm256_set1_ps(xq.sx[xi]), fold(acc[r], i32, dw, xq.dx[xi]));
    }
  }
  store_tile(acc, R, out);
}

// ---- avx512-vnni: int8 weights: dpbusd(x + 128, w) - dpbusd(128, w) --------------------------------

template <QuantFormat F, int R>
VNNI_FN void tile_s8_vnni(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                          float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int halves = quant_scales_per_block(F);
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  const int64_t xstride = nb * kExpandedBlockBytes;
  const int8_t* x0 = xq.xexp + row0 * xstride;
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    for (int h = 0; h < halves; ++h) {
      __m512i isum[R];
      for (int r = 0; r < R; ++r) isum[r] = _mm512_setzero_si512();
      __m512i corr = _mm512_setzero_si512();
      for (int c = h * 4 / halves; c < (h + 1) * 4 / halves; ++c) {
        const __m512i w = _mm512_loadu_si512(blk + 64 * c);  // columns 0-3 | 4-7 of chunk c
        corr = _mm512_dpbusd_epi32(corr, flip, w);
        for (int r = 0; r < R; ++r) {
          const __m256i x8 = _mm256_loadu_si256(
              reinterpret_cast<const __m256i*>(x0 + r * xstride + b * kExpandedBlockBytes + 32 * c));
          const __m512i x = _mm512_xor_si512(_mm512_broadcast_i64x4(x8), flip);
          isum[r] = _mm512_dpbusd_epi32(isum[r], x, w);
        }
      }
      const __m512i c16 = corr;
      const __m256 dw = load_scales8(blk + 256 + (halves == 2 ? 32 * h : 0), F == QuantFormat::kS8F16);
      for (int r = 0; r < R; ++r) {
        const __m512i v = _mm512_sub_epi32(isum[r], c16);
        const __m256i i32 = _mm256_hadd_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
        acc[r] = fold(acc[r], i32, dw, xq.dx[(row0 + r) * nb + b]);
      }
    }
  }
  store_tile(acc, R, out);
}
#endif  // FLUID_RT_ISA_AVX512

// One tile of `rows` (1..kMaxRows) rows for one column group, written to out[rows][8] in column order.
template <QuantFormat F, int R>
void tile_fixed(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                float (*out)[kQuantGroup], [[maybe_unused]] bool vnni) {
#if FLUID_RT_ISA_AVX512
  if (vnni) {
    if constexpr (quant_is_u4(F))
      tile_u4_vnni<F, R>(group, nb, xq, row0, out);
    else
      tile_s8_vnni<F, R>(group, nb, xq, row0, out);
    return;
  }
#endif
#if FLUID_RT_ISA_AVX2
  if constexpr (quant_is_u4(F))
    tile_u4_avx2<F, R>(group, nb, xq, row0, out);
  else
    tile_s8_avx2<F, R>(group, nb, xq, row0, out);
#else
  tile_portable<F>(group, nb, xq, row0, R, out);
#endif
}

template <QuantFormat F>
void run_tile(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0, int rows,
              float (*out)[kQuantGroup], bool vnni) {
  switch (rows) {
    case 1: return tile_fixed<F, 1>(group, nb, xq, row0, out, vnni);
    case 2: return tile_fixed<F, 2>(group, nb, xq, row0, out, vnni);
    case 3: return tile_fixed<F, 3>(group, nb, xq, row0, out, vnni);
#if FLUID_RT_ISA_AVX512
    case 4: return tile_fixed<F, 4>(group, nb, xq, row0, out, vnni);
    case 5: return tile_fixed<F, 5>(group, nb, xq, row0, out, vnni);
    default: return tile_fixed<F, 6>(group, nb, xq, row0, out, vnni);
#else
    default: return tile_fixed<F, 4>(group, nb, xq, row0, out, vnni);
#endif
  }
}

// y[rows, group's columns] = tile (+ bias), rounded to y's dtype.
void store_rows(const QuantLinearParams& p, int64_t g, int64_t row0, int rows,
                const float (*out)[kQuantGroup]) {
  const int64_t n0 = g * kQuantGroup, cols = std::min<int64_t>(kQuantGroup, p.N - n0);
  for (int r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const float bias = p.bias ? load_as_float(p.bias, n0 + j, p.dtype) : 0.f;
      store_from_float(p.y, (row0 + r) * p.y_row_stride + n0 + j, p.dtype, out[r][j] + bias);
    }
}

// Weight bytes a thread keeps hot while a row tile visits them: x's tile (<= 6 rows x K / 32 x
// 128 bytes) stays in L1 and this much of the weight in L2, instead of every group re-reading all
// of x from L2 (which made 128 rows 3x slower per product than 33).
constexpr int64_t kChunkBytes = 96 << 10;

template <QuantFormat F>
void run_groups(const QuantLinearParams& p, const QuantizedRows& xq) {
  const int64_t groups = quant_num_groups(p.N), nb = xq.nb, group_bytes = nb * quant_block_bytes(F);
  const int64_t chunk = p.M <= kMaxRows ? groups : std::max<int64_t>(1, kChunkBytes / group_bytes);
#if FLUID_RT_ISA_AVX512
  const bool vnni = cpu_has_avx512_vnni();
#else
  const bool vnni = false;
#endif
#pragma omp parallel
  {
#ifdef _OPENMP
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t nt = 1, t = 0;
#endif
    // Contiguous ranges of groups: each thread streams its own part of the weight.
    const int64_t g0 = groups * t / nt, g1 = groups * (t + 1) / nt;
    float out[kMaxRows][kQuantGroup];
    for (int64_t c0 = g0; c0 < g1; c0 += chunk) {
      const int64_t c1 = std::min(g1, c0 + chunk);
      for (int64_t row0 = 0; row0 < p.M; row0 += kMaxRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kMaxRows, p.M - row0));
        for (int64_t g = c0; g < c1; ++g) {
          run_tile<F>(p.packed + g * group_bytes, nb, xq, row0, rows, out, vnni);
          store_rows(p, g, row0, rows, out);
        }
      }
    }
  }
}

}  // namespace

void quant_linear_run(const QuantLinearParams& p) {
  if (p.M == 0) return;
  const int64_t nb = p.K / kQuantBlock;
  std::unique_ptr<int8_t[]> xexp(new int8_t[p.M * nb * kExpandedBlockBytes + 64]);
  std::unique_ptr<float[]> scales(new float[2 * p.M * nb]);
  QuantizedRows xq{xexp.get(), scales.get(), scales.get() + p.M * nb, nb};
#pragma omp parallel for schedule(static) if (p.M * p.K >= (1 << 15))
  for (int64_t m = 0; m < p.M; ++m) {
    std::vector<float> row(p.K);
    load_input_row(p, m, row.data());
    quantize_row(row.data(), nb, xq.xexp + m * nb * kExpandedBlockBytes, xq.dx + m * nb, xq.sx + m * nb);
  }
  switch (p.format) {
    case QuantFormat::kU4F16: return run_groups<QuantFormat::kU4F16>(p, xq);
    case QuantFormat::kU4F32: return run_groups<QuantFormat::kU4F32>(p, xq);
    case QuantFormat::kS8F16: return run_groups<QuantFormat::kS8F16>(p, xq);
    default: return run_groups<QuantFormat::kS8F32x2>(p, xq);
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
