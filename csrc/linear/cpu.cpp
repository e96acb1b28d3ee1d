// CPU packed_linear: y = x @ W (+ bias) for the few-row matmuls of decoding, W packed in 32-column
// panels (params.h). Each panel is streamed once per call while up to kMaxTileRows rows of x are
// multiplied with every loaded vector; a longer x is cut into balanced row tiles that re-read the
// panel from L2. Threads take contiguous ranges of panels, so each streams its own part of W.
#include <algorithm>
#include <array>
#include <cmath>
#include <utility>
#include <memory>

#include "common/cpu_features.h"
#include "linear/params.h"

#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
#include <immintrin.h>
#define FLUID_RT_LINEAR_AVX512 1
#define AVX512_FN __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#endif

namespace fluid_rt {
namespace {

// At most 24 accumulators (6 rows x 64 columns or 12 rows x 32 columns): with the weight vectors
// and a broadcast, at most 29 of the 32 zmm registers, and enough independent FMA chains to cover
// the FMA latency from 2 rows up.
constexpr int kMaxTileRows = 12;

// Rows [m0, m0 + rows) of one panel, any ISA: the reference the vector path must match.
void tile_scalar(const PackedLinearParams& p, int64_t panel, int64_t m0, int64_t rows) {
  const int64_t n0 = panel * kLinearPanel;
  const int64_t cols = linear_panel_width(p.N, panel);
  const float* w = p.packed + panel * p.K * kLinearPanel;
  for (int64_t m = m0; m < m0 + rows; ++m) {
    const float* x = p.x + m * p.x_row_stride;
    float acc[kLinearPanel] = {};
    for (int64_t k = 0; k < p.K; ++k) {
      const float a = x[k];
      const float* wk = w + k * cols;
      for (int64_t c = 0; c < cols; ++c) acc[c] += a * wk[c];
    }
    float* y = p.y + m * p.y_row_stride + n0;
    for (int64_t c = 0; c < cols; ++c) y[c] = p.bias ? acc[c] + p.bias[n0 + c] : acc[c];
  }
}

#ifdef FLUID_RT_LINEAR_AVX512
// Rows [m0, m0 + R) x V vectors of 16 output columns (vector v starts at column n[v], a multiple
// of 16, read from its panel) over k in [k0, k1). `a` is the tile's rows of x packed k-major
// ([K][R]), so the R broadcasts of a k step read one short contiguous run through one pointer.
// The accumulators start from zero at k0 == 0 and are parked in `partial` (R x 32 floats, one
// panel's columns) between k-chunks; the last chunk adds the bias and stores y.
// Software prefetch runs kPrefetchRows ahead: the hardware streamer stops at every 4 KiB page, and
// without it the weight stream and the FMAs take turns instead of overlapping.
constexpr int64_t kPrefetchRows = 32;

template <int R, int V, bool kFullPanels>
AVX512_FN void tile_avx512(const PackedLinearParams& p, const int64_t (&n)[V], const float* a,
                           int64_t m0, int64_t k0, int64_t k1, float* partial, bool prefetch) {
  // Vector v: 16 columns from n[v] of its panel, whose rows are `ld` floats apart (32, or fewer in
  // the last panel); lanes past the panel's width are masked (zero, never read from memory).
  // kFullPanels (every panel but the last): constant strides and plain loads in the hot loop.
  const float* w[V];
  int64_t ld[V];
  __mmask16 lanes[V];
  for (int v = 0; v < V; ++v) {
    const int64_t panel = n[v] / kLinearPanel, c = n[v] % kLinearPanel;
    ld[v] = linear_panel_width(p.N, panel);
    w[v] = p.packed + panel * p.K * kLinearPanel + c;
    const int64_t width = std::min<int64_t>(16, std::max<int64_t>(0, ld[v] - c));
    lanes[v] = width >= 16 ? 0xffff : static_cast<__mmask16>((1u << width) - 1);
  }
  __m512 acc[R][V];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v)
      acc[r][v] = k0 == 0 ? _mm512_setzero_ps()
                          : _mm512_loadu_ps(partial + r * kLinearPanel + n[v] % kLinearPanel);
  for (int64_t k = k0; k < k1; ++k) {
    if (prefetch)
      for (int v = 0; v < V; ++v)
        _mm_prefetch(reinterpret_cast<const char*>(
                         w[v] + (k + kPrefetchRows) * (kFullPanels ? kLinearPanel : ld[v])),
                     _MM_HINT_T0);
    __m512 wk[V];
    for (int v = 0; v < V; ++v)
      wk[v] = kFullPanels ? _mm512_loadu_ps(w[v] + k * kLinearPanel)
                          : _mm512_maskz_loadu_ps(lanes[v], w[v] + k * ld[v]);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512 x_rk = _mm512_set1_ps(a[k * R + r]);
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_fmadd_ps(x_rk, wk[v], acc[r][v]);
    }
  }
  if (k1 < p.K) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v)
        _mm512_storeu_ps(partial + r * kLinearPanel + n[v] % kLinearPanel, acc[r][v]);
    return;
  }
  for (int v = 0; v < V; ++v) {
    if (!lanes[v]) continue;  // past the last column
    const __m512 bias = p.bias ? _mm512_maskz_loadu_ps(lanes[v], p.bias + n[v]) : _mm512_setzero_ps();
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
      _mm512_mask_storeu_ps(p.y + (m0 + r) * p.y_row_stride + n[v], lanes[v],
                            _mm512_add_ps(acc[r][v], bias));
  }
}

// Vector shapes by tile height, each at most 24 accumulators:
//  * 1..3 rows, four panels at once (8 vectors), 4..6 rows, two (4 vectors): several weight streams
//    in flight per thread keep more memory requests outstanding than one, and these heights are
//    bound by bandwidth (bench_linear, 1 row: one stream 0.8x MKL's GEMV, four 0.94-1.0x);
//  * 7..12 rows, one panel (2 vectors). (13..24 rows as one tile over 16-column halves measured
//    slower than two tiles over k-chunks.)
template <int R>
void tile_rows(const PackedLinearParams& p, int64_t panel, int64_t count, const float* a,
               int64_t m0, int64_t k0, int64_t k1, float* partial, bool prefetch) {
  const int64_t n0 = panel * kLinearPanel;
  const bool full = n0 + count * kLinearPanel <= p.N;
  if constexpr (R <= 3) {
    if (count == 4) {
      const int64_t n[8] = {n0, n0 + 16, n0 + 32, n0 + 48, n0 + 64, n0 + 80, n0 + 96, n0 + 112};
      if (full) tile_avx512<R, 8, true>(p, n, a, m0, k0, k1, partial, prefetch);
      else tile_avx512<R, 8, false>(p, n, a, m0, k0, k1, partial, prefetch);
      return;
    }
  }
  if constexpr (R <= 6) {
    if (count == 2) {
      const int64_t n[4] = {n0, n0 + 16, n0 + 32, n0 + 48};
      if (full) tile_avx512<R, 4, true>(p, n, a, m0, k0, k1, partial, prefetch);
      else tile_avx512<R, 4, false>(p, n, a, m0, k0, k1, partial, prefetch);
      return;
    }
  }
  const int64_t n[2] = {n0, n0 + 16};
  if (full) tile_avx512<R, 2, true>(p, n, a, m0, k0, k1, partial, prefetch);
  else tile_avx512<R, 2, false>(p, n, a, m0, k0, k1, partial, prefetch);
}

using TileFn = void (*)(const PackedLinearParams&, int64_t, int64_t, const float*, int64_t, int64_t,
                        int64_t, float*, bool);

template <int... R>
constexpr auto make_tile_table(std::integer_sequence<int, R...>) {
  return std::array<TileFn, sizeof...(R)>{&tile_rows<R + 1>...};
}
constexpr auto kTiles = make_tile_table(std::make_integer_sequence<int, kMaxTileRows>{});
#endif

// Rows are cut into balanced tiles: 17 rows run as 9 + 8, not 12 + 5 (a short tile wastes FMA
// slots). Tile t covers rows [tile_start(t), tile_start(t + 1)).
int64_t num_tiles(int64_t M) { return (M + kMaxTileRows - 1) / kMaxTileRows; }
int64_t tile_start(int64_t M, int64_t t) {
  const int64_t tiles = num_tiles(M), base = M / tiles, extra = M % tiles;
  return t * base + std::min(t, extra);  // the first `extra` tiles take one row more
}

void panel_scalar(const PackedLinearParams& p, int64_t panel) {
  for (int64_t t = 0, tiles = num_tiles(p.M); t < tiles; ++t) {
    const int64_t m0 = tile_start(p.M, t);
    tile_scalar(p, panel, m0, tile_start(p.M, t + 1) - m0);
  }
}

#ifdef FLUID_RT_LINEAR_AVX512
// Each tile's rows of x, k-major: tile t at a + tile_start(t) * K, element (k, r) at [k * R + r].
void pack_rows(const PackedLinearParams& p, float* a, int64_t k0, int64_t k1) {
  for (int64_t t = 0, tiles = num_tiles(p.M); t < tiles; ++t) {
    const int64_t m0 = tile_start(p.M, t), R = tile_start(p.M, t + 1) - m0;
    float* dst = a + m0 * p.K;
    for (int64_t k = k0; k < k1; ++k)
      for (int64_t r = 0; r < R; ++r) dst[k * R + r] = p.x[(m0 + r) * p.x_row_stride + k];
  }
}

// How many panels a tile streams side by side (tile_rows): 4 for 1..3 rows, 2 for 4..6, else 1.
int64_t panel_group(int64_t M) { return M <= 3 ? 4 : M <= 6 ? 2 : 1; }

// Panels [panel, panel + count), count 1, 2 or 4 as tile_rows takes them. With several tiles, k
// runs in chunks small enough for L1, every tile taking its turn on a chunk, so the panel comes
// from memory once and the later tiles read it from L1.
void panels_avx512(const PackedLinearParams& p, int64_t panel, int64_t count, const float* a,
                   float* partial) {
  const int64_t tiles = num_tiles(p.M);
  constexpr int64_t kChunkRows = 96;  // 12 KiB of panel
  const int64_t chunk = tiles == 1 ? p.K : kChunkRows;
  for (int64_t k0 = 0; k0 < p.K; k0 += chunk) {
    const int64_t k1 = std::min(p.K, k0 + chunk);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t m0 = tile_start(p.M, t), rows = tile_start(p.M, t + 1) - m0;
      kTiles[rows - 1](p, panel, count, a + m0 * p.K, m0, k0, k1,
                       partial + m0 * kLinearPanel, t == 0);
    }
  }
}
#endif

}  // namespace

void pack_linear_weight_cpu(const PackLinearParams& p) {
  const int64_t panels = linear_num_panels(p.N);
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel;
    const int64_t cols = linear_panel_width(p.N, panel);
    float* dst = p.packed + panel * p.K * kLinearPanel;
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t c = 0; c < cols; ++c) dst[k * cols + c] = p.w[k * p.stride_k + (n0 + c) * p.stride_n];
  }
}

void packed_linear_cpu(const PackedLinearParams& p) {
  if (p.M == 0 || p.N == 0) return;
  if (p.silu_and_mul) {
    // The activation is materialized once (M x K floats, a few KiB while decoding) rather than
    // recomputed for every panel that reads it.
    std::unique_ptr<float[]> act(new float[p.M * p.K]);
#pragma omp parallel for schedule(static) if (p.M * p.K >= (1 << 16))
    for (int64_t m = 0; m < p.M; ++m) {
      const float* gate = p.x + m * p.x_row_stride;
      const float* up = gate + p.K;
      for (int64_t k = 0; k < p.K; ++k) {
        const float g = gate[k];
        act[m * p.K + k] = g / (1.f + std::exp(-g)) * up[k];
      }
    }
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
  if (cpu_use_avx512()) {
    std::unique_ptr<float[]> a(new float[p.M * p.K]);  // x packed per tile; no zero-fill
#pragma omp parallel if (parallel)
    {
      std::unique_ptr<float[]> partial(new float[p.M * kLinearPanel]);  // per thread
#pragma omp for schedule(static)
      for (int64_t k0 = 0; k0 < p.K; k0 += 64) pack_rows(p, a.get(), k0, std::min(p.K, k0 + 64));
      // (the implicit barrier: every thread reads all of `a`)
      const int64_t group = panel_group(p.M);
#pragma omp for schedule(static)
      for (int64_t first = 0; first < panels; first += group) {
        // A short last group goes two panels at a time where it can, then one.
        for (int64_t q = first, end = std::min(first + group, panels); q < end;) {
          const int64_t count = end - q >= group ? group : end - q >= 2 && group >= 2 ? 2 : 1;
          panels_avx512(p, q, count, a.get(), partial.get());
          q += count;
        }
      }
    }
    return;
  }
#endif
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t panel = 0; panel < panels; ++panel) panel_scalar(p, panel);
}

}  // namespace fluid_rt
