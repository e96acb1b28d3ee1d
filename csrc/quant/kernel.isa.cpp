// The quantized matmul (params.h), compiled once per CPU path. Threads take contiguous ranges of
// 8-column groups; each group's weights are streamed once per tile of up to kMaxRows rows (16 on
// AMX tiles), and every row runs through the same instructions whatever its tile (integer dot
// products are exact in any order, and each row's float work is the same sequence), so a row's
// result never depends on the other rows of the call.
//   portable: int16 dot products the compiler vectorizes (the same sums and float steps, the float
//             ones unfused);
//   avx2:     maddubs (u8 x s8 pairs -> int16) + madd (-> int32); int8 weights as |w| x sign(x, w);
//             AVX-VNNI dpbusd (u8 x s8 quads -> int32) where the CPU has it (the same integers);
//   avx512:   AVX512-VNNI dpbusd on two column groups per 512-bit vector where the CPU has it, else
//             the avx2 code; int8 weights enter dpbusd as w + 128 and the 128 * sum(xq) excess is
//             subtracted; calls of kAmxMinRows rows or more on AMX-INT8 tiles where the CPU has them
//             (amx.h).
// The avx2 and avx512 paths take the same float steps per column, so all of these give the same bits.
#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "common/isa.h"
#include "common/parallel.h"
#include "quant/activations.h"
#include "quant/amx.h"
#include "quant/group_pair.h"
#include "quant/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

void quant_linear_run(const QuantLinearParams& p);

namespace {

// Rows per tile: as many as the registers hold (per row one or two int32 and one float accumulator).
constexpr int kMaxRows = FLUID_RT_ISA_AVX512 ? 8 : 4;
constexpr int kQuads = kQuantBlock / 4;  // quad vectors per block

template <QuantFormat F>
constexpr int quads_per_scale() {
  return kQuads / static_cast<int>(quant_scales_per_block(F));
}

// The 8 (or 2 x 8) weight scales and the 8 mins of a block, in column order.
template <QuantFormat F>
inline void block_scales(const uint8_t* blk, float* d, float* m) {
  const uint8_t* s = blk + quant_quant_bytes(F);
  if (F == QuantFormat::kU4F16 || F == QuantFormat::kS8F16) {
    const uint16_t* h = reinterpret_cast<const uint16_t*>(s);
    for (int i = 0; i < 8; ++i) d[i] = fp16_to_float(h[i]);
    if (F == QuantFormat::kU4F16)
      for (int i = 0; i < 8; ++i) m[i] = fp16_to_float(h[8 + i]);
  } else {
    std::memcpy(d, s, 8 * quant_scales_per_block(F) * sizeof(float));
    if (F == QuantFormat::kU4F32) std::memcpy(m, s + 32, 8 * sizeof(float));
  }
}

// ---- portable micro-kernel ----------------------------------------------------------------------

// A block's quants as int16, one column after another: q[j][k] = q(column j, k). int16 products
// of these and x's int8 quants summed into int32 are the pattern compilers vectorize (SSE2's
// pmaddwd, NEON's smlal); the sums are exact, so the order of the lanes changes no bit.
template <QuantFormat F>
inline void unpack_block(const uint8_t* blk, int16_t (*q)[kQuantBlock]) {
  for (int j = 0; j < 8; ++j)
    for (int t = 0; t < kQuads; ++t)
      for (int i = 0; i < 4; ++i) {
        if (quant_is_u4(F)) {
          const uint8_t byte = blk[32 * (t % 4) + 4 * j + i];
          q[j][4 * t + i] = static_cast<int16_t>(t < 4 ? (byte & 0xF) : (byte >> 4));
        } else {
          q[j][4 * t + i] = static_cast<int8_t>(blk[32 * t + 4 * j + i]);
        }
      }
}

// The integer dot product of N quants of one column and N of x.
template <int N>
inline int32_t dot_quants(const int16_t* q, const int16_t* x) {
  int32_t sum = 0;
  for (int k = 0; k < N; ++k) sum += q[k] * x[k];
  return sum;
}

template <QuantFormat F>
void tile_portable(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0, int rows,
                   float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int qps = quads_per_scale<F>(), k_per_scale = 4 * qps;
  const int64_t K = nb * kQuantBlock;
  float acc[kMaxRows][8] = {};
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    prefetch_quant_block<F>(blk);
    int16_t q[8][kQuantBlock];
    float d[16], m[8];
    unpack_block<F>(blk, q);
    block_scales<F>(blk, d, m);
    for (int r = 0; r < rows; ++r) {
      const int8_t* x = xq.xq + (row0 + r) * K + b * kQuantBlock;
      const int64_t xi = (row0 + r) * nb + b;
      int16_t xs[kQuantBlock];
      for (int k = 0; k < kQuantBlock; ++k) xs[k] = x[k];
      for (int h = 0; h < kQuantBlock / k_per_scale; ++h)  // two scales per block for kS8F32x2
        for (int j = 0; j < 8; ++j) {
          const int32_t dot = dot_quants<k_per_scale>(q[j] + h * k_per_scale, xs + h * k_per_scale);
          acc[r][j] = acc[r][j] + static_cast<float>(dot) * (d[8 * h + j] * xq.dx[xi]);
        }
      if (quant_has_min(F))
        for (int j = 0; j < 8; ++j) acc[r][j] = acc[r][j] + m[j] * xq.sx[xi];
    }
  }
  for (int r = 0; r < rows; ++r) std::memcpy(out[r], acc[r], sizeof(acc[r]));
}

#if FLUID_RT_ISA_AVX2

inline __m256 load_scales8(const uint8_t* s, bool f16) {
  return f16 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s)))
             : _mm256_loadu_ps(reinterpret_cast<const float*>(s));
}

// x's four k of quad t (x points at a block) in every 32-bit lane.
inline __m256i broadcast_quad(const int8_t* x, int t) {
  int32_t v;
  std::memcpy(&v, x + 4 * t, 4);
  return _mm256_set1_epi32(v);
}

// acc += float(i32) * (d_w * d_x): one block (or half-block) of one row, 8 columns.
inline __m256 fold(__m256 acc, __m256i i32, __m256 dw, float dx) {
  return _mm256_fmadd_ps(_mm256_cvtepi32_ps(i32), _mm256_mul_ps(dw, _mm256_set1_ps(dx)), acc);
}

// The weight's min term: acc += m_w * s_x.
template <QuantFormat F>
inline __m256 add_min(__m256 acc, const uint8_t* blk, float sx) {
  constexpr bool f16 = F == QuantFormat::kU4F16;
  const __m256 mw = load_scales8(blk + quant_quant_bytes(F) + (f16 ? 16 : 32), f16);
  return _mm256_fmadd_ps(mw, _mm256_set1_ps(sx), acc);
}

template <int R>
inline void store_tile(const __m256* acc, float (*out)[kQuantGroup]) {
  for (int r = 0; r < R; ++r) _mm256_storeu_ps(out[r], acc[r]);
}

// ---- avx2: 4-bit weights ------------------------------------------------------------------------

template <QuantFormat F, int R>
void tile_u4_avx2(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                  float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  const int64_t K = nb * kQuantBlock;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    prefetch_quant_block<F>(blk);
    const int8_t* x0 = xq.xq + row0 * K + b * kQuantBlock;
    __m256i s16[R];  // int16 pair sums: 8 quads x 2 x 15 x 127 < 2^15
    for (int r = 0; r < R; ++r) s16[r] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      for (int r = 0; r < R; ++r) {
        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(lo, broadcast_quad(x0 + r * K, c)));
        s16[r] = _mm256_add_epi16(s16[r], _mm256_maddubs_epi16(hi, broadcast_quad(x0 + r * K, c + 4)));
      }
    }
    const __m256 dw = load_scales8(blk + 128, F == QuantFormat::kU4F16);
    for (int r = 0; r < R; ++r) {
      const int64_t xi = (row0 + r) * nb + b;
      acc[r] = add_min<F>(fold(acc[r], _mm256_madd_epi16(s16[r], ones), dw, xq.dx[xi]), blk, xq.sx[xi]);
    }
  }
  store_tile<R>(acc, out);
}

// ---- avx2: int8 weights (|w| x sign(x, w), since maddubs takes one unsigned operand) ------------

template <QuantFormat F, int R>
void tile_s8_avx2(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                  float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int qps = quads_per_scale<F>();
  const int64_t K = nb * kQuantBlock;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    prefetch_quant_block<F>(blk);
    const int8_t* x0 = xq.xq + row0 * K + b * kQuantBlock;
    for (int h = 0; h < kQuads / qps; ++h) {
      __m256i i32[R];
      for (int r = 0; r < R; ++r) i32[r] = _mm256_setzero_si256();
      for (int t = h * qps; t < (h + 1) * qps; ++t) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * t));
        const __m256i aw = _mm256_abs_epi8(w);
        for (int r = 0; r < R; ++r) {
          const __m256i pairs = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(broadcast_quad(x0 + r * K, t), w));
          i32[r] = _mm256_add_epi32(i32[r], _mm256_madd_epi16(pairs, ones));
        }
      }
      const __m256 dw = load_scales8(blk + 256 + 32 * h, F == QuantFormat::kS8F16);
      for (int r = 0; r < R; ++r) acc[r] = fold(acc[r], i32[r], dw, xq.dx[(row0 + r) * nb + b]);
    }
  }
  store_tile<R>(acc, out);
}

#endif  // FLUID_RT_ISA_AVX2

#if FLUID_RT_ISA_AVX2
// dpbusd (u8 x s8 quads -> int32): the EVEX form of AVX512-VNNI in the avx512 copy, the VEX form of
// AVX-VNNI (Intel Alder Lake and later, AMD Zen 5: AVX2 CPUs) in the avx2 copy. Either gives the
// integers maddubs + madd give (no pair sum of these quants reaches int16's limit), so a path's
// results are the same bits with or without it.
#if FLUID_RT_ISA_AVX512
#define VNNI_FN __attribute__((target("avx512vnni,avx512vl")))
VNNI_FN inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) { return _mm256_dpbusd_epi32(acc, u, s); }
inline bool cpu_has_vnni() { return cpu_has_avx512_vnni(); }
#else
#define VNNI_FN __attribute__((target("avxvnni")))
VNNI_FN inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
  return _mm256_dpbusd_avx_epi32(acc, u, s);
}
inline bool cpu_has_vnni() { return cpu_has_avx_vnni(); }
#endif

// Independent int32 accumulators per row, so that a tile of few rows still hides dpbusd's latency.
constexpr int vnni_chains(int rows) { return rows >= 4 ? 1 : rows >= 2 ? 2 : 4; }
// The 4-bit 256-bit tile keeps two chains at 4 rows too (GCC then keeps the float accumulators on the
// stack, and it is still faster): on the avx2 path's AVX-VNNI x0.93-0.96 per call at 4-8 rows
// (3072 x 576 Q4_1, paired A/B).
constexpr int vnni_chains_u4_256(int rows) { return rows == 4 ? 2 : vnni_chains(rows); }

// Sums a row's chains into its first.
template <int C>
VNNI_FN inline __m256i sum_chains(const __m256i* chain) {
  __m256i s = chain[0];
  for (int c = 1; c < C; ++c) s = _mm256_add_epi32(s, chain[c]);
  return s;
}

// ---- vnni: 4-bit weights -------------------------------------------------------------------

template <QuantFormat F, int R>
VNNI_FN void tile_u4_vnni(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                          float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int C = vnni_chains_u4_256(R);
  const int64_t K = nb * kQuantBlock;
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    prefetch_quant_block<F>(blk);
    const int8_t* x0 = xq.xq + row0 * K + b * kQuantBlock;
    __m256i isum[R][C];
    for (int r = 0; r < R; ++r)
      for (int c = 0; c < C; ++c) isum[r][c] = _mm256_setzero_si256();
    for (int c = 0; c < 4; ++c) {
      const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * c));
      const __m256i lo = _mm256_and_si256(raw, low), hi = _mm256_and_si256(_mm256_srli_epi16(raw, 4), low);
      for (int r = 0; r < R; ++r) {
        __m256i& even = isum[r][(2 * c) % C];
        even = dpbusd(even, lo, broadcast_quad(x0 + r * K, c));
        __m256i& odd = isum[r][(2 * c + 1) % C];
        odd = dpbusd(odd, hi, broadcast_quad(x0 + r * K, c + 4));
      }
    }
    const __m256 dw = load_scales8(blk + 128, F == QuantFormat::kU4F16);
    for (int r = 0; r < R; ++r) {
      const int64_t xi = (row0 + r) * nb + b;
      acc[r] = add_min<F>(fold(acc[r], sum_chains<C>(isum[r]), dw, xq.dx[xi]), blk, xq.sx[xi]);
    }
  }
  store_tile<R>(acc, out);
}

// ---- vnni: int8 weights: dpbusd(w + 128, x) - 128 * sum(x) --------------------------------

template <QuantFormat F, int R>
VNNI_FN void tile_s8_vnni(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                          float (*out)[kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int qps = quads_per_scale<F>(), C = vnni_chains(R);
  const int64_t K = nb * kQuantBlock;
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* blk = group + b * bb;
    prefetch_quant_block<F>(blk);
    const int8_t* x0 = xq.xq + row0 * K + b * kQuantBlock;
    for (int h = 0; h < kQuads / qps; ++h) {
      __m256i isum[R][C];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) isum[r][c] = _mm256_setzero_si256();
      for (int t = h * qps; t < (h + 1) * qps; ++t) {
        const __m256i w =
            _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(blk + 32 * t)), flip);
        for (int r = 0; r < R; ++r) {
          __m256i& chain = isum[r][t % C];
          chain = dpbusd(chain, w, broadcast_quad(x0 + r * K, t));
        }
      }
      const __m256 dw = load_scales8(blk + 256 + 32 * h, F == QuantFormat::kS8F16);
      for (int r = 0; r < R; ++r) {
        const int32_t* sum16 = xq.sum16 + 2 * ((row0 + r) * nb + b);
        const int32_t excess = 128 * (qps == kQuads ? sum16[0] + sum16[1] : sum16[h]);
        const __m256i i32 = _mm256_sub_epi32(sum_chains<C>(isum[r]), _mm256_set1_epi32(excess));
        acc[r] = fold(acc[r], i32, dw, xq.dx[(row0 + r) * nb + b]);
      }
    }
  }
  store_tile<R>(acc, out);
}
#endif  // FLUID_RT_ISA_AVX2

#if FLUID_RT_ISA_AVX512
// ---- avx512-vnni: two column groups per 512-bit vector ---------------------------------------------
// Two 8-column tiles in one: x's quads are broadcast once for 16 columns and each dpbusd, fold and
// scale load covers both groups, about half the instructions (one-row forward x1.05, 3-7 rows
// x1.09-1.12, paired A/B). Every lane takes the steps of tile_u4_vnni / tile_s8_vnni, so the bits
// are theirs.
#define VNNI512_FN __attribute__((target("avx512vnni,avx512f,avx512bw,avx512dq")))

template <QuantFormat F, int R>
VNNI512_FN void tile_pair_vnni512(const uint8_t* group0, const uint8_t* group1, int64_t nb,
                                  const QuantizedRows& xq, int64_t row0, float (*out)[2 * kQuantGroup]) {
  constexpr int64_t bb = quant_block_bytes(F);
  constexpr int qps = quads_per_scale<F>(), C = vnni_chains(R);
  const int64_t K = nb * kQuantBlock;
  const __m512i low = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t *blk0 = group0 + b * bb, *blk1 = group1 + b * bb;
    prefetch_quant_block<F>(blk0);
    prefetch_quant_block<F>(blk1);
    const int8_t* x0 = xq.xq + row0 * K + b * kQuantBlock;
    auto quad = [&](int r, int t) {  // row r's x quad t in every lane
      int32_t v;
      std::memcpy(&v, x0 + r * K + 4 * t, 4);
      return _mm512_set1_epi32(v);
    };
    for (int h = 0; h < kQuads / qps; ++h) {
      __m512i isum[R][C];
      for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) isum[r][c] = _mm512_setzero_si512();
      if constexpr (quant_is_u4(F)) {
        for (int c = 0; c < 4; ++c) {
          const __m512i raw = join256(blk0 + 32 * c, blk1 + 32 * c);
          const __m512i lo = _mm512_and_si512(raw, low),
                        hi = _mm512_and_si512(_mm512_srli_epi16(raw, 4), low);
          for (int r = 0; r < R; ++r) {
            isum[r][(2 * c) % C] = _mm512_dpbusd_epi32(isum[r][(2 * c) % C], lo, quad(r, c));
            isum[r][(2 * c + 1) % C] = _mm512_dpbusd_epi32(isum[r][(2 * c + 1) % C], hi, quad(r, c + 4));
          }
        }
      } else {
        for (int t = h * qps; t < (h + 1) * qps; ++t) {
          const __m512i w = _mm512_xor_si512(join256(blk0 + 32 * t, blk1 + 32 * t), flip);
          for (int r = 0; r < R; ++r) isum[r][t % C] = _mm512_dpbusd_epi32(isum[r][t % C], w, quad(r, t));
        }
      }
      const __m512 dw = pair_weight_scales<F>(blk0, blk1, h);
      for (int r = 0; r < R; ++r) {
        __m512i sum = isum[r][0];
        for (int c = 1; c < C; ++c) sum = _mm512_add_epi32(sum, isum[r][c]);
        const int64_t xi = (row0 + r) * nb + b;
        if constexpr (!quant_is_u4(F)) {
          const int32_t* sum16 = xq.sum16 + 2 * xi;
          sum = _mm512_sub_epi32(sum,
                                 _mm512_set1_epi32(128 * (qps == kQuads ? sum16[0] + sum16[1] : sum16[h])));
        }
        acc[r] = fold16(acc[r], sum, dw, xq.dx[xi]);
      }
    }
    if constexpr (quant_has_min(F)) {
      const __m512 mw = pair_mins<F>(blk0, blk1);
      for (int r = 0; r < R; ++r) acc[r] = add_min16(acc[r], mw, xq.sx[(row0 + r) * nb + b]);
    }
  }
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(out[r], acc[r]);
}

template <QuantFormat F, int R = 1>
void run_pair_tile(const uint8_t* group0, const uint8_t* group1, int64_t nb, const QuantizedRows& xq,
                   int64_t row0, int rows, float (*out)[2 * kQuantGroup]) {
  if constexpr (R < kMaxRows) {
    if (rows != R) return run_pair_tile<F, R + 1>(group0, group1, nb, xq, row0, rows, out);
  }
  tile_pair_vnni512<F, R>(group0, group1, nb, xq, row0, out);
}
#endif  // FLUID_RT_ISA_AVX512

// One tile of `rows` (1..kMaxRows) rows for one column group, written to out[rows][8] in column order.
template <QuantFormat F, int R>
void tile_fixed(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0,
                float (*out)[kQuantGroup], [[maybe_unused]] bool vnni) {
#if FLUID_RT_ISA_AVX2
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

// Instantiates the tile for each row count 1..kMaxRows.
template <QuantFormat F, int R = 1>
void run_tile(const uint8_t* group, int64_t nb, const QuantizedRows& xq, int64_t row0, int rows,
              float (*out)[kQuantGroup], bool vnni) {
  if constexpr (R < kMaxRows) {
    if (rows != R) return run_tile<F, R + 1>(group, nb, xq, row0, rows, out, vnni);
  }
  tile_fixed<F, R>(group, nb, xq, row0, out, vnni);
}

// y[rows, group g's columns] = out[r][col0 ..] (+ bias), rounded to y's dtype.
template <int W>
void store_rows(const QuantLinearParams& p, int64_t g, int64_t row0, int rows, const float (*out)[W],
                int col0 = 0) {
  const int64_t n0 = g * kQuantGroup, cols = std::min<int64_t>(kQuantGroup, p.N - n0);
  for (int r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) {
      const float bias = p.bias ? load_as_float(p.bias, n0 + j, p.dtype) : 0.f;
      store_from_float(p.y, (row0 + r) * p.y_row_stride + n0 + j, p.dtype, out[r][col0 + j] + bias);
    }
}

// Weight bytes a thread keeps hot while a row tile visits them: x's tile (<= 8 rows x K bytes)
// stays in L1 and this much of the weight in L2, instead of every group re-reading all
// of x from L2 (which made 128 rows 3x slower per product than 33).
constexpr int64_t kChunkBytes = 96 << 10;

// Row tile [row0, row0 + rows) of group g, or of groups g and g + 1 (< end) on the avx512 path's
// 512-bit pair tile; returns how many groups it did.
template <QuantFormat F>
int64_t run_groups_at(const QuantLinearParams& p, const QuantizedRows& xq, int64_t g, int64_t end,
                      int64_t row0, int rows, bool vnni) {
  const int64_t group_bytes = xq.nb * quant_block_bytes(F);
  const uint8_t* group = p.packed + g * group_bytes;
#if FLUID_RT_ISA_AVX512
  if (vnni && g + 1 < end) {
    float out[kMaxRows][2 * kQuantGroup];
    run_pair_tile<F>(group, group + group_bytes, xq.nb, xq, row0, rows, out);
    store_rows(p, g, row0, rows, out, 0);
    store_rows(p, g + 1, row0, rows, out, kQuantGroup);
    return 2;
  }
#endif
  float out[kMaxRows][kQuantGroup];
  run_tile<F>(group, xq.nb, xq, row0, rows, out, vnni);
  store_rows(p, g, row0, rows, out);
  return 1;
}

template <QuantFormat F>
void run_groups(const QuantLinearParams& p, const QuantizedRows& xq) {
  const int64_t groups = quant_num_groups(p.N), group_bytes = xq.nb * quant_block_bytes(F);
  const int64_t chunk = p.M <= kMaxRows ? groups : std::max<int64_t>(1, kChunkBytes / group_bytes);
#if FLUID_RT_ISA_AVX2
  const bool vnni = cpu_has_vnni();
#else
  const bool vnni = false;
#endif
#pragma omp parallel
  {
    const ItemRange share = thread_share(groups);  // each thread streams its own part of the weight
    for (int64_t c0 = share.begin; c0 < share.end; c0 += chunk) {
      const int64_t c1 = std::min(share.end, c0 + chunk);
      for_row_tiles(p.M, kMaxRows, [&](int64_t row0, int rows) {
        for (int64_t g = c0; g < c1;) g += run_groups_at<F>(p, xq, g, c1, row0, rows, vnni);
      });
    }
  }
}

#if FLUID_RT_ISA_AVX512

// run_groups on AMX tiles: threads take pairs of column groups (a C tile is 16 columns); each pair's
// B tiles are filled once, for all row tiles. A lone last group runs the VNNI tile, which computes
// the same bits.
template <QuantFormat F>
void run_groups_amx(const QuantLinearParams& p, const QuantizedRows& xq) {
  const int64_t groups = quant_num_groups(p.N), pairs = (groups + 1) / 2, nb = xq.nb;
  const int64_t group_bytes = nb * quant_block_bytes(F);
#pragma omp parallel
  {
    const ItemRange share = thread_share(pairs);
    std::unique_ptr<uint8_t[]> b_buffer(new uint8_t[nb * kAmxBTileBytes + 64]);
    uint8_t* b_tiles = b_buffer.get() + (64 - reinterpret_cast<uintptr_t>(b_buffer.get()) % 64) % 64;
    float out[kAmxMaxRows][kAmxCols], lone[kMaxRows][kQuantGroup];
    int configured = 0;
    for (int64_t pair = share.begin; pair < share.end; ++pair) {
      const int64_t g = 2 * pair;
      const uint8_t* group0 = p.packed + g * group_bytes;
      if (g + 1 == groups) {
        for_row_tiles(p.M, kMaxRows, [&](int64_t row0, int rows) {
          run_tile<F>(group0, nb, xq, row0, rows, lone, true);
          store_rows(p, g, row0, rows, lone);
        });
        continue;
      }
      amx_fill_b_all<F>(group0, group0 + group_bytes, nb, b_tiles);
      for_row_tiles(p.M, kAmxMaxRows, [&](int64_t row0, int rows) {
        if (rows != configured) amx_configure<F>(configured = rows);
        amx_run_tile<F>(group0, group0 + group_bytes, b_tiles, nb, xq, row0, rows, out);
        store_rows(p, g, row0, rows, out, 0);
        store_rows(p, g + 1, row0, rows, out, kQuantGroup);
      });
    }
    if (configured) amx_release();
  }
}
#endif

template <QuantFormat F>
void run_format(const QuantLinearParams& p, const QuantizedRows& xq) {
#if FLUID_RT_ISA_AVX512
  if (p.M >= kAmxMinRows && cpu_amx_enabled() && cpu_has_amx_int8() && cpu_has_avx512_vnni())
    return run_groups_amx<F>(p, xq);
#endif
  run_groups<F>(p, xq);
}

}  // namespace

void quant_linear_run(const QuantLinearParams& p) {
  if (p.M == 0) return;
  const int64_t nb = p.K / kQuantBlock;
  std::unique_ptr<int8_t[]> quants(new int8_t[p.M * p.K]);
  std::unique_ptr<float[]> scales(new float[2 * p.M * nb]);
  std::unique_ptr<int32_t[]> sums(new int32_t[2 * p.M * nb]);
  QuantizedRows xq{quants.get(), scales.get(), scales.get() + p.M * nb, sums.get(), nb};
#pragma omp parallel for schedule(static) if (p.M * p.K >= (1 << 15))
  for (int64_t m = 0; m < p.M; ++m) {
    std::vector<float> row(p.K);
    if (p.dtype == DType::kFloat32)
      load_input_row<DType::kFloat32>(p, m, row.data());
    else
      load_input_row<DType::kBFloat16>(p, m, row.data());
    quantize_row(row.data(), nb, xq.xq + m * p.K, xq.dx + m * nb, xq.sx + m * nb, xq.sum16 + 2 * m * nb);
  }
  switch (p.format) {
    case QuantFormat::kU4F16: return run_format<QuantFormat::kU4F16>(p, xq);
    case QuantFormat::kU4F32: return run_format<QuantFormat::kU4F32>(p, xq);
    case QuantFormat::kS8F16: return run_format<QuantFormat::kS8F16>(p, xq);
    default: return run_format<QuantFormat::kS8F32x2>(p, xq);
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
