// CPU packed_linear: y = x @ W (+ bias) for the few-row matmuls of decoding, W packed in 32-column
// panels (params.h). Each panel is streamed once per call while up to kMaxTileRows rows of x are
// multiplied with every loaded vector; a longer x is cut into balanced row tiles over k-chunks that
// re-read the panel from L1. Threads take contiguous ranges of panels, so each streams its own
// part of W. float32 runs on AVX-512 FMAs, bfloat16 on AVX512-BF16's pair dot products (vdpbf16ps);
// both have a portable scalar path that reads the packed layout element by element.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "common/cpu_features.h"
#include "common/lanes.h"
#include "linear/params.h"

#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
#include <immintrin.h>
#define FLUID_RT_LINEAR_AVX512 1
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#if defined(FLUID_RT_HAS_AVX512_BF16)
#define FLUID_RT_LINEAR_BF16 1
#define BF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,fma,avx512bf16")))
#endif
#endif

namespace fluid_rt {
namespace {

// At most 24 accumulators (3 rows x 128 columns, 6 x 64 or 12 x 32): with the weight vectors and a
// broadcast, at most 29 of the 32 zmm registers, and enough independent FMA chains to cover the
// FMA latency from 2 rows up.
constexpr int kMaxTileRows = 12;

int64_t esize(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// k "steps" of the packed layout: one k (float32) or a pair of k (bfloat16).
int64_t num_steps(const PackedLinearParams& p) { return p.dtype == DType::kFloat32 ? p.K : p.K / 2; }

// Rows are cut into balanced tiles: 17 rows run as 9 + 8, not 12 + 5 (a short tile wastes FMA
// slots). Tile t covers rows [tile_start(t), tile_start(t + 1)).
int64_t num_tiles(int64_t M) { return (M + kMaxTileRows - 1) / kMaxTileRows; }
int64_t tile_start(int64_t M, int64_t t) {
  const int64_t tiles = num_tiles(M), base = M / tiles, extra = M % tiles;
  return t * base + std::min(t, extra);  // the first `extra` tiles take one row more
}

// How many panels a tile streams side by side (tile_rows): 4 for 1..3 rows, 2 for 4..6, else 1.
int64_t panel_group(int64_t M) { return M <= 3 ? 4 : M <= 6 ? 2 : 1; }

// Element (k, column c) of panel `panel` (width w) in the packed buffer.
inline int64_t packed_index(DType dt, int64_t K, int64_t panel, int64_t w, int64_t k, int64_t c) {
  const int64_t base = panel * kLinearPanel * K;
  return dt == DType::kBFloat16 ? base + (k / 2) * w * 2 + c * 2 + k % 2  // [K / 2][w][2]
                                : base + k * w + c;                      // [K][w]
}

// ---- portable path: the reference the vector paths must match ----------------------------------

float weight_at(const PackedLinearParams& p, int64_t k, int64_t n) {
  const int64_t panel = n / kLinearPanel, c = n % kLinearPanel, w = linear_panel_width(p.N, panel);
  return load_as_float(p.packed, packed_index(p.dtype, p.K, panel, w, k, c), p.dtype);
}

void panel_scalar(const PackedLinearParams& p, int64_t panel) {
  const int64_t n0 = panel * kLinearPanel, cols = linear_panel_width(p.N, panel);
  for (int64_t m = 0; m < p.M; ++m) {
    float acc[kLinearPanel] = {};
    for (int64_t k = 0; k < p.K; ++k) {
      const float a = load_as_float(p.x, m * p.x_row_stride + k, p.dtype);
      for (int64_t c = 0; c < cols; ++c) acc[c] += a * weight_at(p, k, n0 + c);
    }
    for (int64_t c = 0; c < cols; ++c) {
      const float bias = p.bias ? load_as_float(p.bias, n0 + c, p.dtype) : 0.f;
      store_from_float(p.y, m * p.y_row_stride + n0 + c, p.dtype, acc[c] + bias);
    }
  }
}

#ifdef FLUID_RT_LINEAR_AVX512
// Software prefetch runs kPrefetchSteps ahead (4 KiB of a full panel): the hardware streamer
// stops at every 4 KiB page, and without it the weight stream and the FMAs take turns instead of
// overlapping.
constexpr int64_t kPrefetchSteps = 32;

// Vector v of a tile: 16 output columns from n[v] (a multiple of 16) of its panel. In bytes the two
// dtypes share one geometry: a step of a panel of width w is 4 w bytes, and column c starts 4 c
// bytes into it. Lanes past the panel's width are masked (zero, never read from memory).
template <int V>
struct Vectors {
  const char* w[V];
  int64_t step_bytes[V];
  __mmask16 lanes[V];
  Vectors(const PackedLinearParams& p, const int64_t (&n)[V]) {
    for (int v = 0; v < V; ++v) {
      const int64_t panel = n[v] / kLinearPanel, c = n[v] % kLinearPanel;
      const int64_t width = linear_panel_width(p.N, panel);
      step_bytes[v] = 4 * width;
      w[v] = static_cast<const char*>(p.packed) + panel * kLinearPanel * p.K * esize(p.dtype) + 4 * c;
      lanes[v] = first_lanes16(width - c);
    }
  }
};

// The accumulators of rows [0, R) x V vectors start from zero at step 0 and are parked in `partial`
// (R x 32 floats, one panel's columns) between k-chunks.
template <int R, int V>
AVX512_FN void load_partial(__m512 (&acc)[R][V], const int64_t (&n)[V], int64_t s0, const float* partial) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v)
      acc[r][v] = s0 == 0 ? _mm512_setzero_ps() : _mm512_loadu_ps(partial + r * kLinearPanel + n[v] % kLinearPanel);
}

template <int R, int V>
AVX512_FN void store_partial(const __m512 (&acc)[R][V], const int64_t (&n)[V], float* partial) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) _mm512_storeu_ps(partial + r * kLinearPanel + n[v] % kLinearPanel, acc[r][v]);
}

// Rows [m0, m0 + R) x the V vectors over steps [s0, s1). `a` is the tile's rows of x packed
// step-major ([steps][R]), so the R broadcasts of a step read one short contiguous run.
// kFullPanels (every panel but the last): constant strides and plain loads in the hot loop.
template <int R, int V, bool kFullPanels>
AVX512_FN void tile_f32(const PackedLinearParams& p, const int64_t (&n)[V], const float* a, int64_t m0, int64_t s0,
                        int64_t s1, float* partial, bool prefetch) {
  const Vectors<V> vec(p, n);
  __m512 acc[R][V];
  load_partial<R, V>(acc, n, s0, partial);
  for (int64_t s = s0; s < s1; ++s) {
    if (prefetch)
      for (int v = 0; v < V; ++v)
        _mm_prefetch(vec.w[v] + (s + kPrefetchSteps) * (kFullPanels ? 128 : vec.step_bytes[v]), _MM_HINT_T0);
    __m512 wk[V];
    for (int v = 0; v < V; ++v)
      wk[v] = kFullPanels ? _mm512_loadu_ps(vec.w[v] + s * 128)
                          : _mm512_maskz_loadu_ps(vec.lanes[v], vec.w[v] + s * vec.step_bytes[v]);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512 x_rs = _mm512_set1_ps(a[s * R + r]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x_rs, wk[v], acc[r][v]);
    }
  }
  if (s1 < num_steps(p)) return store_partial<R, V>(acc, n, partial);
  const float* bias = static_cast<const float*>(p.bias);
  for (int v = 0; v < V; ++v) {
    if (!vec.lanes[v]) continue;  // past the last column
    const __m512 b = bias ? _mm512_maskz_loadu_ps(vec.lanes[v], bias + n[v]) : _mm512_setzero_ps();
    float* y = static_cast<float*>(p.y) + m0 * p.y_row_stride + n[v];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) _mm512_mask_storeu_ps(y + r * p.y_row_stride, vec.lanes[v], _mm512_add_ps(acc[r][v], b));
  }
}

#ifdef FLUID_RT_LINEAR_BF16
// bfloat16: a step is a pair of k. Each 32-bit lane of a weight vector holds one column's pair and
// each entry of `a` one row's pair; vdpbf16ps adds both products into the float32 accumulator.
template <int R, int V, bool kFullPanels>
BF16_FN void tile_bf16(const PackedLinearParams& p, const int64_t (&n)[V], const uint32_t* a, int64_t m0, int64_t s0,
                       int64_t s1, float* partial, bool prefetch) {
  const Vectors<V> vec(p, n);
  __m512 acc[R][V];
  load_partial<R, V>(acc, n, s0, partial);
  for (int64_t s = s0; s < s1; ++s) {
    if (prefetch)
      for (int v = 0; v < V; ++v)
        _mm_prefetch(vec.w[v] + (s + kPrefetchSteps) * (kFullPanels ? 128 : vec.step_bytes[v]), _MM_HINT_T0);
    __m512i wk[V];
    for (int v = 0; v < V; ++v)
      wk[v] = kFullPanels ? _mm512_loadu_si512(vec.w[v] + s * 128)
                          : _mm512_maskz_loadu_epi32(vec.lanes[v], vec.w[v] + s * vec.step_bytes[v]);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512bh x_rs = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[s * R + r]));
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x_rs, (__m512bh)wk[v]);
    }
  }
  if (s1 < num_steps(p)) return store_partial<R, V>(acc, n, partial);
  const uint16_t* bias = static_cast<const uint16_t*>(p.bias);
  for (int v = 0; v < V; ++v) {
    if (!vec.lanes[v]) continue;  // past the last column
    __m512 b = _mm512_setzero_ps();
    if (bias) {  // bfloat16 -> float32: the 16 bits go to the top of each lane
      const __m256i raw = _mm256_maskz_loadu_epi16(vec.lanes[v], bias + n[v]);
      b = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
    }
    uint16_t* y = static_cast<uint16_t*>(p.y) + m0 * p.y_row_stride + n[v];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m256bh out = _mm512_cvtneps_pbh(_mm512_add_ps(acc[r][v], b));  // round to nearest even
      _mm256_mask_storeu_epi16(y + r * p.y_row_stride, vec.lanes[v], (__m256i)out);
    }
  }
}
#endif

// Vector shapes by tile height, each at most 24 accumulators:
//  * 1..3 rows, four panels at once (8 vectors), 4..6 rows, two (4 vectors): several weight streams
//    in flight per thread keep more memory requests outstanding than one, and these heights are
//    bound by bandwidth (bench_linear, 1 row: one stream 0.8x MKL's GEMV, four 0.94-1.0x);
//  * 7..12 rows, one panel (2 vectors). (13..24 rows as one tile over 16-column halves measured
//    slower than two tiles over k-chunks.)
template <int R, bool kBf16, int V>
void run_tile(const PackedLinearParams& p, const int64_t (&n)[V], bool full, const void* a, int64_t m0, int64_t s0,
              int64_t s1, float* partial, bool prefetch) {
  if constexpr (kBf16) {
#ifdef FLUID_RT_LINEAR_BF16
    const auto* pairs = static_cast<const uint32_t*>(a);
    if (full) tile_bf16<R, V, true>(p, n, pairs, m0, s0, s1, partial, prefetch);
    else tile_bf16<R, V, false>(p, n, pairs, m0, s0, s1, partial, prefetch);
#endif
  } else {
    const auto* rows = static_cast<const float*>(a);
    if (full) tile_f32<R, V, true>(p, n, rows, m0, s0, s1, partial, prefetch);
    else tile_f32<R, V, false>(p, n, rows, m0, s0, s1, partial, prefetch);
  }
}

template <int R, bool kBf16>
void tile_rows(const PackedLinearParams& p, int64_t panel, int64_t count, const void* a, int64_t m0, int64_t s0,
               int64_t s1, float* partial, bool prefetch) {
  const int64_t n0 = panel * kLinearPanel;
  const bool full = n0 + count * kLinearPanel <= p.N;
  if constexpr (R <= 3) {
    if (count == 4) {
      const int64_t n[8] = {n0, n0 + 16, n0 + 32, n0 + 48, n0 + 64, n0 + 80, n0 + 96, n0 + 112};
      return run_tile<R, kBf16>(p, n, full, a, m0, s0, s1, partial, prefetch);
    }
  }
  if constexpr (R <= 6) {
    if (count == 2) {
      const int64_t n[4] = {n0, n0 + 16, n0 + 32, n0 + 48};
      return run_tile<R, kBf16>(p, n, full, a, m0, s0, s1, partial, prefetch);
    }
  }
  const int64_t n[2] = {n0, n0 + 16};
  run_tile<R, kBf16>(p, n, full, a, m0, s0, s1, partial, prefetch);
}

using TileFn = void (*)(const PackedLinearParams&, int64_t, int64_t, const void*, int64_t, int64_t, int64_t, float*,
                        bool);

template <bool kBf16, int... R>
constexpr auto make_tile_table(std::integer_sequence<int, R...>) {
  return std::array<TileFn, sizeof...(R)>{&tile_rows<R + 1, kBf16>...};
}
constexpr auto kTilesF32 = make_tile_table<false>(std::make_integer_sequence<int, kMaxTileRows>{});
constexpr auto kTilesBf16 = make_tile_table<true>(std::make_integer_sequence<int, kMaxTileRows>{});

// Each tile's rows of x, step-major: tile t at element tile_start(t) * steps of `a`, entry (s, r) at
// [s * R + r]: the float (float32) or the two bfloat16 of k = 2 s, 2 s + 1 as one 32-bit word.
template <typename A>
void pack_rows(const PackedLinearParams& p, A* a, int64_t s0, int64_t s1) {
  const int64_t steps = num_steps(p);
  for (int64_t t = 0, tiles = num_tiles(p.M); t < tiles; ++t) {
    const int64_t m0 = tile_start(p.M, t), R = tile_start(p.M, t + 1) - m0;
    A* dst = a + m0 * steps;
    for (int64_t r = 0; r < R; ++r) {
      const char* row = static_cast<const char*>(p.x) + (m0 + r) * p.x_row_stride * esize(p.dtype);
      for (int64_t s = s0; s < s1; ++s) std::memcpy(dst + s * R + r, row + s * sizeof(A), sizeof(A));
    }
  }
}

// Panels [panel, panel + count), count 1, 2 or 4 as tile_rows takes them. With several tiles, the
// steps run in chunks small enough for L1, every tile taking its turn on a chunk, so the panel
// comes from memory once and the later tiles read it from L1.
void panels_avx512(const PackedLinearParams& p, const TileFn* tiles_fn, int64_t panel, int64_t count,
                   const void* a, int64_t a_bytes, float* partial) {
  const int64_t tiles = num_tiles(p.M), steps = num_steps(p);
  constexpr int64_t kChunkSteps = 96;  // 12 KiB of panel
  const int64_t chunk = tiles == 1 ? steps : kChunkSteps;
  for (int64_t s0 = 0; s0 < steps; s0 += chunk) {
    const int64_t s1 = std::min(steps, s0 + chunk);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t m0 = tile_start(p.M, t), rows = tile_start(p.M, t + 1) - m0;
      tiles_fn[rows - 1](p, panel, count, static_cast<const char*>(a) + m0 * steps * a_bytes, m0, s0, s1,
                         partial + m0 * kLinearPanel, t == 0);
    }
  }
}

template <typename A>
void run_avx512(const PackedLinearParams& p, const TileFn* tiles_fn, bool parallel) {
  const int64_t panels = linear_num_panels(p.N), steps = num_steps(p);
  std::unique_ptr<A[]> a(new A[p.M * steps]);  // x packed per tile; no zero-fill
#pragma omp parallel if (parallel)
  {
    std::unique_ptr<float[]> partial(new float[p.M * kLinearPanel]);  // per thread
#pragma omp for schedule(static)
    for (int64_t s0 = 0; s0 < steps; s0 += 64) pack_rows<A>(p, a.get(), s0, std::min(steps, s0 + 64));
    // (the implicit barrier: every thread reads all of `a`)
    // Each thread streams an equal share of the panels (balanced by panels, not by groups: 18
    // panels in groups of 4 would split 12 + 6), in groups, a short last group two panels at a
    // time where it can, then one. Which thread computes a column never changes its sums.
    const int64_t group = panel_group(p.M);
#ifdef _OPENMP
    const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
    const int64_t threads = 1, thread = 0;
#endif
    const int64_t end = panels * (thread + 1) / threads;
    for (int64_t q = panels * thread / threads; q < end;) {
      const int64_t count = end - q >= group ? group : end - q >= 2 && group >= 2 ? 2 : 1;
      panels_avx512(p, tiles_fn, q, count, a.get(), sizeof(A), partial.get());
      q += count;
    }
  }
}
#endif  // FLUID_RT_LINEAR_AVX512

// silu(gate) * up of each row, materialized once (M x K elements, a few KiB while decoding) rather
// than recomputed for every panel that reads it. bfloat16 rounds after the silu and after the
// product, as torch's bfloat16 F.silu(gate) * up does.
void silu_and_mul_rows(const PackedLinearParams& p, void* act) {
  const bool bf16 = p.dtype == DType::kBFloat16;
#pragma omp parallel for schedule(static) if (p.M * p.K >= (1 << 16))
  for (int64_t m = 0; m < p.M; ++m) {
    const int64_t row = m * p.x_row_stride;
    for (int64_t k = 0; k < p.K; ++k) {
      const float g = load_as_float(p.x, row + k, p.dtype), up = load_as_float(p.x, row + p.K + k, p.dtype);
      float s = g / (1.f + std::exp(-g));
      if (bf16) s = bf16_to_float(float_to_bf16(s));
      store_from_float(act, m * p.K + k, p.dtype, s * up);
    }
  }
}

// Both directions walk one panel at a time (a few tens of KiB, cache-resident) so that the
// strided side of the copy stays in cache and the other side streams. Within a panel both dtypes
// are a [steps][w] matrix of 32-bit units (a float, or a bfloat16 pair of k), so the copy is a
// transpose of 32-bit units whenever the weight's k is contiguous (the usual [N, K] layout).
template <bool kPack>
void copy_panels_units(const PackLinearParams& p) {
  const int64_t panels = linear_num_panels(p.N), pair = p.dtype == DType::kBFloat16 ? 2 : 1;
  const int64_t steps = p.K / pair;
  uint32_t* packed = static_cast<uint32_t*>(p.packed);
  uint32_t* w_ptr = const_cast<uint32_t*>(static_cast<const uint32_t*>(p.w));  // written when unpacking
  const int64_t row = p.stride_n / pair;  // in units
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel, w = linear_panel_width(p.N, panel);
    uint32_t* pan = packed + panel * kLinearPanel * steps;
    constexpr int64_t kBlock = 64;  // steps per block: 8 KiB of a full panel, L1-resident
    for (int64_t s0 = 0; s0 < steps; s0 += kBlock) {
      const int64_t s1 = std::min(steps, s0 + kBlock);
      for (int64_t c = 0; c < w; ++c) {
        uint32_t* wr = w_ptr + (n0 + c) * row;
        for (int64_t s = s0; s < s1; ++s) {
          if (kPack) pan[s * w + c] = wr[s];
          else wr[s] = pan[s * w + c];
        }
      }
    }
  }
}

// W stored k-major ([K][N], stride_n == 1): each step of a panel is one run of w floats in a row of
// W (float32), or two runs, de-interleaved from the w pairs (bfloat16). Used to unpack slices for
// oneDNN, which multiplies that layout without repacking it.
#ifdef FLUID_RT_LINEAR_AVX512
// w bfloat16 pairs -> the w first and the w second halves (the hot loop of unpacking for oneDNN).
AVX512_FN void deinterleave_avx512(const uint16_t* pairs, int64_t w, uint16_t* even, uint16_t* odd) {
  for (int64_t c = 0; c < w; c += 16) {
    const __mmask16 m = first_lanes16(w - c);
    const __m512i v = _mm512_maskz_loadu_epi32(m, pairs + 2 * c);
    _mm256_mask_storeu_epi16(even + c, m, _mm512_cvtepi32_epi16(v));
    _mm256_mask_storeu_epi16(odd + c, m, _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16)));
  }
}
#endif

template <bool kPack>
void copy_panels_kmajor(const PackLinearParams& p) {
  const bool avx512 = cpu_use_avx512();
  (void)avx512;
  const int64_t panels = linear_num_panels(p.N), es = esize(p.dtype);
  const bool bf16 = p.dtype == DType::kBFloat16;
  char* packed = static_cast<char*>(p.packed);
  char* w_ptr = const_cast<char*>(static_cast<const char*>(p.w));  // written when unpacking
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel, w = linear_panel_width(p.N, panel);
    char* pan = packed + panel * kLinearPanel * p.K * es;
    if (!bf16) {
      for (int64_t k = 0; k < p.K; ++k) {
        char* row = w_ptr + (k * p.stride_k + n0) * es;
        if (kPack) std::memcpy(pan + k * w * es, row, w * es);
        else std::memcpy(row, pan + k * w * es, w * es);
      }
      continue;
    }
    uint16_t* pairs = reinterpret_cast<uint16_t*>(pan);
    uint16_t* W = reinterpret_cast<uint16_t*>(w_ptr);
    for (int64_t kk = 0; kk < p.K / 2; ++kk) {
      uint16_t* even = W + 2 * kk * p.stride_k + n0;
      uint16_t* odd = even + p.stride_k;
      uint16_t* step = pairs + kk * w * 2;
#ifdef FLUID_RT_LINEAR_AVX512
      if (!kPack && avx512) {
        deinterleave_avx512(step, w, even, odd);
        continue;
      }
#endif
      for (int64_t c = 0; c < w; ++c) {
        if (kPack) step[2 * c] = even[c], step[2 * c + 1] = odd[c];
        else even[c] = step[2 * c], odd[c] = step[2 * c + 1];
      }
    }
  }
}

// Any strides, element by element (packing from a transposed or sliced weight, once at load).
template <typename T, bool kPack>
void copy_panels_strided(const PackLinearParams& p) {
  const int64_t panels = linear_num_panels(p.N);
  T* packed = static_cast<T*>(p.packed);
  T* w_ptr = const_cast<T*>(static_cast<const T*>(p.w));  // written when unpacking
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel, w = linear_panel_width(p.N, panel);
    for (int64_t c = 0; c < w; ++c) {
      for (int64_t k = 0; k < p.K; ++k) {
        T& a = packed[packed_index(p.dtype, p.K, panel, w, k, c)];
        T& b = w_ptr[k * p.stride_k + (n0 + c) * p.stride_n];
        if (kPack) a = b;
        else b = a;
      }
    }
  }
}

template <bool kPack>
void copy_panels(const PackLinearParams& p) {
  const int64_t pair = p.dtype == DType::kBFloat16 ? 2 : 1;
  if (p.stride_k == 1 && p.stride_n % pair == 0 && reinterpret_cast<uintptr_t>(p.w) % 4 == 0)
    copy_panels_units<kPack>(p);
  else if (p.stride_n == 1)
    copy_panels_kmajor<kPack>(p);
  else if (p.dtype == DType::kFloat32)
    copy_panels_strided<float, kPack>(p);
  else
    copy_panels_strided<uint16_t, kPack>(p);
}

}  // namespace

void pack_linear_weight_cpu(const PackLinearParams& p) { copy_panels<true>(p); }

void unpack_linear_weight_cpu(const PackLinearParams& p) { copy_panels<false>(p); }

void packed_linear_cpu(const PackedLinearParams& p) {
  if (p.M == 0 || p.N == 0) return;
  if (p.silu_and_mul) {
    std::unique_ptr<char[]> act(new char[p.M * p.K * esize(p.dtype)]);
    silu_and_mul_rows(p, act.get());
    PackedLinearParams q = p;
    q.x = act.get();
    q.x_row_stride = p.K;
    q.silu_and_mul = false;
    packed_linear_cpu(q);
    return;
  }
  const int64_t panels = linear_num_panels(p.N);
  // A parallel region costs a few microseconds: only worth it for a few hundred kFLOP.
  const bool parallel = panels > 1 && p.M * p.K * p.N >= (1 << 17);
#ifdef FLUID_RT_LINEAR_AVX512
  if (p.dtype == DType::kFloat32 && cpu_use_avx512()) return run_avx512<float>(p, kTilesF32.data(), parallel);
#ifdef FLUID_RT_LINEAR_BF16
  if (p.dtype == DType::kBFloat16 && cpu_use_avx512() && cpu_has_avx512_bf16())
    return run_avx512<uint32_t>(p, kTilesBf16.data(), parallel);
#endif
#endif
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t panel = 0; panel < panels; ++panel) panel_scalar(p, panel);
}

}  // namespace fluid_rt
