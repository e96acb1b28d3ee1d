// token_entropy on the CPU: one pass per row with an online (max, sum-exp, sum d*exp) triple.
//
// Work is cut into units (a row, or a piece of a row when rows are fewer than the threads); each unit
// yields a Partial, partials of a row are merged, and the row is finalized. Rows that contain any
// non-finite logit are flagged by the fast pass and redone by a short scalar pass that applies the
// documented non-finite rules (rare, so the common path carries no per-element branches for them).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <vector>

#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
#include <immintrin.h>
#endif

#include "common/cpu_features.h"
#include "common/lanes.h"
#include "entropy/params.h"

namespace fluid_rt {
namespace {

// exp(d) for d below this rounds to exactly 0 in float32 (below half the smallest denormal):
// clamping there keeps d finite (so d * exp(d) is 0, never -inf * 0) and changes no float32 result.
// The clamp is written max(d, floor), which also maps the NaN of (-inf) - (-inf) to the floor: -inf
// logits thus weigh exactly 0, and NaN logits are detected separately.
constexpr float kExpFloor = -110.0f;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// Statistics of the finite logits of a range of a row (see params.h). s == 0 means "no element".
struct Partial {
  float m = -kInf;
  float s = 0.0f;
  float t = 0.0f;
  int64_t arg = 0;
  bool nonfinite = false;  // the range holds a NaN or a +inf: the row takes the slow path
};

// a <- a (+) b. Larger max wins the argmax; equal maxima keep the smaller index (first occurrence).
inline void merge_into(Partial& a, const Partial& b, float k) {
  a.nonfinite |= b.nonfinite;
  if (b.s == 0.0f) return;
  if (a.s == 0.0f) {
    a.m = b.m, a.s = b.s, a.t = b.t, a.arg = b.arg;
    return;
  }
  const float m = std::max(a.m, b.m);
  const float da = std::max((a.m - m) * k, kExpFloor), db = std::max((b.m - m) * k, kExpFloor);
  const float ea = std::exp(da), eb = std::exp(db);
  const int64_t arg = a.m > b.m ? a.arg : b.m > a.m ? b.arg : std::min(a.arg, b.arg);
  a.t = (a.t + da * a.s) * ea + (b.t + db * b.s) * eb;
  a.s = a.s * ea + b.s * eb;
  a.m = m;
  a.arg = arg;
}

// ---------------------------------------------------------------------------------------------
// Portable scalar path: 16 independent lanes (shorter fp32 sums, and the compiler may vectorize
// the loads). Non-finite logits are skipped; NaN and +inf are flagged, -inf weighs 0.
template <DType D>
Partial range_scalar(const void* row, int64_t lo, int64_t hi, float k) {
  constexpr int L = 16;
  Partial lane[L];
  bool nonfinite = false;
  for (int64_t i0 = lo; i0 < hi; i0 += L) {
    const int n = static_cast<int>(std::min<int64_t>(L, hi - i0));
    for (int l = 0; l < n; ++l) {
      const float x = load_as_float(row, i0 + l, D);
      if (!std::isfinite(x)) {
        nonfinite |= !(x == -kInf);
        continue;
      }
      Partial& p = lane[l];
      if (x > p.m) {  // the running max grows: rescale (s, t) to the new reference
        if (p.s != 0.0f) {
          const float dm = std::max((p.m - x) * k, kExpFloor);
          const float e = std::exp(dm);
          p.t = (p.t + dm * p.s) * e;
          p.s *= e;
        }
        p.m = x;
        p.arg = i0 + l;
      }
      const float d = std::max((x - p.m) * k, kExpFloor);
      const float e = std::exp(d);
      p.s += e;
      p.t += d * e;
    }
  }
  Partial out;
  for (int l = 0; l < L; ++l) merge_into(out, lane[l], k);
  out.nonfinite = nonfinite;
  return out;
}

Partial range_scalar(const void* row, DType dt, int64_t lo, int64_t hi, float k) {
  switch (dt) {
    case DType::kFloat32: return range_scalar<DType::kFloat32>(row, lo, hi, k);
    case DType::kBFloat16: return range_scalar<DType::kBFloat16>(row, lo, hi, k);
    default: return range_scalar<DType::kFloat16>(row, lo, hi, k);
  }
}

// ---------------------------------------------------------------------------------------------
// AVX-512 path: 4 vectors (64 logits) per step, per-lane (m, s, t, argmax) with one accumulator
// pair per vector slot, and a polynomial exp.
#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
#define FLUID_RT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,fma")))

// exp(d) for d <= 0 (any d works up to overflow). Range reduction d = n ln2 + r,
// |r| <= ln2/2, with ln2 split in two (Cody-Waite) so n*ln2 is exact; e^r by its degree-7 Taylor
// polynomial (truncation < 6e-9 relative, below half an ulp) in Horner form with FMAs; 2^n applied
// by scalef, which also produces the denormals and the 0 underflow exactly. Max error ~1 ulp.
FLUID_RT_AVX512 inline __m512 exp_avx512(__m512 d) {
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(d, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), d);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

template <DType D>
FLUID_RT_AVX512 inline __m512 load16(const void* row, int64_t i) {
  if constexpr (D == DType::kFloat32) {
    return _mm512_loadu_ps(static_cast<const float*>(row) + i);
  } else {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const uint16_t*>(row) + i));
    if constexpr (D == DType::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}

template <DType D>
FLUID_RT_AVX512 inline __m512 load16_masked(const void* row, int64_t i, __mmask16 mask) {
  if constexpr (D == DType::kFloat32) {
    return _mm512_maskz_loadu_ps(mask, static_cast<const float*>(row) + i);
  } else {
    const __m256i h = _mm256_maskz_loadu_epi16(mask, static_cast<const uint16_t*>(row) + i);
    if constexpr (D == DType::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  }
}


template <DType D>
FLUID_RT_AVX512 Partial range_avx512(const void* row, int64_t lo, int64_t hi, float k) {
  constexpr int U = 4;  // vectors per step
  const __m512 kv = _mm512_set1_ps(k);
  const __m512 floor = _mm512_set1_ps(kExpFloor);
  const __m512i lane_idx = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 m = _mm512_set1_ps(-kInf);
  __m512i arg = _mm512_setzero_si512();
  __m512 s[U], t[U];
  for (int u = 0; u < U; ++u) s[u] = t[u] = _mm512_setzero_ps();
  __mmask16 bad = 0;

  // Raise the per-lane max to cover x (with its first index), rescaling every (s, t) slot.
  auto raise_max = [&](const __m512* x, const __mmask16* valid, int nvec, int64_t base) FLUID_RT_AVX512 {
    __m512 mn = m;
    for (int u = 0; u < nvec; ++u) {
      const __mmask16 gt = _mm512_mask_cmp_ps_mask(valid[u], x[u], mn, _CMP_GT_OQ);
      mn = _mm512_mask_mov_ps(mn, gt, x[u]);
      const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int>(base + 16 * u)), lane_idx);
      arg = _mm512_mask_mov_epi32(arg, gt, idx);
    }
    const __m512 dm = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(m, mn), kv), floor);
    // lanes that had no element yet (m = -inf) get dm = floor and e ~ 0 while s = t = 0: stays 0.
    const __m512 e = exp_avx512(dm);
    for (int u = 0; u < U; ++u) {
      t[u] = _mm512_mul_ps(_mm512_fmadd_ps(dm, s[u], t[u]), e);
      s[u] = _mm512_mul_ps(s[u], e);
    }
    m = mn;
  };

  int64_t i = lo;
  for (; i + 16 * U <= hi; i += 16 * U) {
    __m512 x[U];
    for (int u = 0; u < U; ++u) x[u] = load16<D>(row, i + 16 * u);
    // NaN detection: an unordered compare is true when either operand is NaN.
    bad |= _mm512_cmp_ps_mask(x[0], x[1], _CMP_UNORD_Q) | _mm512_cmp_ps_mask(x[2], x[3], _CMP_UNORD_Q);
    const __m512 cm = _mm512_max_ps(_mm512_max_ps(x[0], x[1]), _mm512_max_ps(x[2], x[3]));
    if (_mm512_cmp_ps_mask(cm, m, _CMP_GT_OQ)) {
      const __mmask16 all[U] = {0xffff, 0xffff, 0xffff, 0xffff};
      raise_max(x, all, U, i);
    }
    for (int u = 0; u < U; ++u) {
      const __m512 d = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(x[u], m), kv), floor);
      const __m512 e = exp_avx512(d);
      s[u] = _mm512_add_ps(s[u], e);
      t[u] = _mm512_fmadd_ps(d, e, t[u]);
    }
  }
  for (; i < hi; i += 16) {  // tail: masked vectors of up to 16
    const __mmask16 valid = first_lanes16(hi - i);
    const __m512 x = load16_masked<D>(row, i, valid);
    bad |= _mm512_mask_cmp_ps_mask(valid, x, x, _CMP_UNORD_Q);
    if (_mm512_mask_cmp_ps_mask(valid, x, m, _CMP_GT_OQ)) raise_max(&x, &valid, 1, i);
    const __m512 d = _mm512_max_ps(_mm512_mul_ps(_mm512_sub_ps(x, m), kv), floor);
    const __m512 e = exp_avx512(d);
    s[0] = _mm512_mask_add_ps(s[0], valid, s[0], e);
    t[0] = _mm512_mask3_fmadd_ps(d, e, t[0], valid);
  }

  // A +inf logit becomes its lane's max (and leaves that lane with s = 0): flag it.
  bad |= _mm512_cmp_ps_mask(m, _mm512_set1_ps(kInf), _CMP_EQ_OQ);

  // Horizontal merge of the 16 lanes x U slots (slots share the lane's max).
  alignas(64) float mv[16], sv[U][16], tv[U][16];
  alignas(64) int32_t av[16];
  _mm512_store_ps(mv, m);
  _mm512_store_si512(av, arg);
  for (int u = 0; u < U; ++u) _mm512_store_ps(sv[u], s[u]), _mm512_store_ps(tv[u], t[u]);
  Partial out;
  for (int l = 0; l < 16; ++l) {
    Partial p;
    p.m = mv[l];
    p.arg = av[l];
    for (int u = 0; u < U; ++u) p.s += sv[u][l], p.t += tv[u][l];
    merge_into(out, p, k);
  }
  out.nonfinite = bad != 0;  // a NaN or a +inf
  return out;
}

FLUID_RT_AVX512 Partial range_avx512(const void* row, DType dt, int64_t lo, int64_t hi, float k) {
  switch (dt) {
    case DType::kFloat32: return range_avx512<DType::kFloat32>(row, lo, hi, k);
    case DType::kBFloat16: return range_avx512<DType::kBFloat16>(row, lo, hi, k);
    default: return range_avx512<DType::kFloat16>(row, lo, hi, k);
  }
}
#endif

Partial range_stats(const void* row, DType dt, int64_t lo, int64_t hi, float k, bool use_avx512) {
#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
  if (use_avx512) return range_avx512(row, dt, lo, hi, k);
#endif
  (void)use_avx512;
  return range_scalar(row, dt, lo, hi, k);
}

// ---------------------------------------------------------------------------------------------
struct RowOut {
  float entropy, max_prob, lse;
  int64_t argmax;
};

RowOut finalize(const Partial& p, float k) {
  const float log_s = std::log(p.s);
  // -sum p log p is >= 0; rounding can leave a -1e-8 residue for a one-hot row.
  return {std::max(log_s - p.t / p.s, 0.0f), 1.0f / p.s, p.m * k + log_s, p.arg};
}

// The documented rules for a row holding NaN or +-inf (a second, scalar pass over that row only).
RowOut nonfinite_row(const void* row, DType dt, int64_t V, float k) {
  int64_t pos_inf = 0, first_pos_inf = -1;
  for (int64_t i = 0; i < V; ++i) {
    const float x = load_as_float(row, i, dt);
    if (std::isnan(x)) return {kNaN, kNaN, kNaN, i};  // NaN anywhere: NaN stats, argmax = first NaN
    if (x == kInf && pos_inf++ == 0) first_pos_inf = i;
  }
  if (pos_inf > 0) {  // the limit distribution: uniform over the +inf entries
    const float c = static_cast<float>(pos_inf);
    return {std::log(c), 1.0f / c, kInf, first_pos_inf};
  }
  const Partial p = range_scalar(row, dt, 0, V, k);  // skips the -inf entries (probability 0)
  if (p.s == 0.0f) return {kNaN, kNaN, -kInf, 0};      // every entry is -inf
  return finalize(p, k);
}

}  // namespace

void token_entropy_cpu(const TokenEntropyParams& p) {
  const int64_t rows = p.rows, V = p.vocab;
  if (rows <= 0) return;
  const float k = p.inv_temperature;
  const bool avx512 = cpu_use_avx512();
  const int threads = std::max(1, p.num_threads);
  const size_t esize = p.dtype == DType::kFloat32 ? 4 : 2;
  auto row_ptr = [&](int64_t r) {
    return static_cast<const void*>(static_cast<const char*>(p.logits) + r * p.row_stride * esize);
  };
  auto store = [&](int64_t r, const RowOut& o) {
    p.entropy[r] = o.entropy, p.max_prob[r] = o.max_prob, p.logsumexp[r] = o.lse, p.argmax[r] = o.argmax;
  };
  auto finish_row = [&](int64_t r, const Partial& part) {
    // s == 0: no finite logit (all -inf), also settled by the rules.
    const bool special = part.nonfinite || part.s == 0.0f;
    store(r, special ? nonfinite_row(row_ptr(r), p.dtype, V, k) : finalize(part, k));
  };

  // Few rows: cut each row into pieces (multiples of 64 logits, at least kMinPiece) so that every
  // thread gets ~4 units; their partials are merged per row afterwards.
  constexpr int64_t kMinPiece = 8192;
  int64_t splits = 1;
  if (threads > 1 && rows < 4 * threads) {
    const int64_t want = (4 * threads + rows - 1) / rows;
    splits = std::max<int64_t>(1, std::min(want, V / kMinPiece));
  }

  if (splits == 1) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) if (rows > 1 && threads > 1)
    for (int64_t r = 0; r < rows; ++r) finish_row(r, range_stats(row_ptr(r), p.dtype, 0, V, k, avx512));
    return;
  }

  const int64_t piece = ((V + splits - 1) / splits + 63) / 64 * 64;
  std::vector<Partial> parts(static_cast<size_t>(rows * splits));
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < rows * splits; ++u) {
      const int64_t r = u / splits, lo = (u % splits) * piece, hi = std::min(V, lo + piece);
      if (lo < hi) parts[u] = range_stats(row_ptr(r), p.dtype, lo, hi, k, avx512);
    }
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      Partial acc;
      for (int64_t j = 0; j < splits; ++j) merge_into(acc, parts[r * splits + j], k);
      finish_row(r, acc);
    }
  }
}

}  // namespace fluid_rt
