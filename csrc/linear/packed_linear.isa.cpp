// packed_linear's kernel, one source for every CPU path (compiled once per path, csrc/common/isa.h):
// y = x @ W (+ bias) with W in 32-column panels (params.h), on the vectors of linear/simd.h.
//
// A call multiplies a tile of R rows of x by V vectors of columns (V * kLanes of them: a slice of a
// panel, one panel, or several side by side), keeping the R x V accumulators in registers over the
// steps of k. Every output element is one chain of fused multiply-adds in k order starting from
// zero, whatever the tile, the vectors or the k-chunking (partial sums are parked in float32 and
// reloaded exactly), so a row's result never depends on the other rows of the call.
//
// Steps: float32 panels hold one k per step; bfloat16 panels a pair of k per step (params.h). The
// avx512 copy multiplies bfloat16 on AMX-BF16 tiles where the CPU has them (linear/amx.h), else pairs
// with AVX512-BF16's vdpbf16ps where it has that; every other case widens the pair to two float32
// vectors in registers (a shift) and FMAs them in k order.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <utility>

#include "common/isa.h"
#include "common/parallel.h"
#include "linear/amx.h"
#include "linear/kernels.h"
#include "linear/params.h"
#include "linear/simd.h"

// vdpbf16ps is used through a target attribute (the avx512 copy's flags do not include it; the CPU
// may lack it, cpu_has_avx512_bf16() decides at run time). GCC >= 10 and clang >= 11 know it.
#if FLUID_RT_ISA_AVX512 && (defined(__clang__) ? __clang_major__ >= 11 : __GNUC__ >= 10)
#define FLUID_RT_LINEAR_DPBF16 1
#define DPBF16_FN __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#endif

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

// ---- tile shapes per path ------------------------------------------------------------------------
// Accumulators per tile (R x V registers): avx512 has 32 zmm (24 accumulators leave room for the
// weights and a broadcast), avx2 16 ymm, portable 16 xmm on x86-64 (32 on aarch64).
#if FLUID_RT_ISA_AVX512
constexpr int kMaxTileRows = 12;
constexpr int kAccumulators = 24;
// 1..3 rows stream 4 panels at once, 4..6 two, 7..12 one: the short tiles are bound by memory
// bandwidth, and several weight streams per thread keep more requests in flight.
constexpr int vectors_for(int64_t rows) { return rows <= 3 ? 8 : rows <= 6 ? 4 : 2; }
#else
constexpr int kMaxTileRows = 6;
constexpr int kAccumulators = 12;
// avx2 (8 lanes): 1 row streams 2 panels, 2..3 rows one, 4..6 rows half a panel at a time (the
// classic 6 x 16 register tile). portable (4 lanes): one panel, half of one, a quarter.
constexpr int vectors_for(int64_t rows) { return rows <= 1 ? 8 : rows <= 3 ? 4 : 2; }
#endif
constexpr int kVectorChoices[] = {8, 4, 2};  // V of every call (see plan_calls)
constexpr int vector_index(int v) { return v == 8 ? 0 : v == 4 ? 1 : 2; }

// Software prefetch kPrefetchSteps ahead (4 KiB of a full panel): the hardware streamer stops at
// every 4 KiB page, and without it the weight stream and the FMAs take turns instead of overlapping.
constexpr int64_t kPrefetchSteps = 32;
// With several row tiles, steps run in chunks of about 12 KiB of weights, every tile taking its
// turn on a chunk, so the weights come from memory once and the later tiles read them from L1.
constexpr int64_t kChunkBytes = 12 * 1024;

int64_t num_steps(const PackedLinearParams& p) { return p.dtype == DType::kFloat32 ? p.K : p.K / 2; }

// ---- the three ways to multiply a step ------------------------------------------------------------
// `a` holds a tile's rows of x step-major: entry (s, r) at a[(s * R + r) * kUnits], kUnits 32-bit
// words per step and row.

// The V vectors of a call: columns n0 + v * kLanes. In bytes both dtypes share one geometry: a step
// of a panel of width w is 4 w bytes and column c starts 4 c bytes into it. Lanes past the panel's
// width are never read (masked, zero).
template <int V>
struct Columns {
  const char* w[V];
  int64_t step_bytes[V];
  int64_t lanes[V];
  Columns(const PackedLinearParams& p, int64_t n0) {
    const int64_t esize = p.dtype == DType::kFloat32 ? 4 : 2;
    for (int v = 0; v < V; ++v) {
      const int64_t n = n0 + v * kLanes, panel = n / kLinearPanel, c = n % kLinearPanel;
      const int64_t width = panel < linear_num_panels(p.N) ? linear_panel_width(p.N, panel) : 0;
      step_bytes[v] = 4 * width;
      w[v] = static_cast<const char*>(p.packed) + panel * kLinearPanel * p.K * esize + 4 * c;
      lanes[v] = std::clamp<int64_t>(width - c, 0, kLanes);
    }
  }
  // Step s of vector v (kFull: every panel of the call is 32 wide, a step is 128 bytes).
  template <bool kFull>
  const char* at(int v, int64_t s) const {
    return w[v] + s * (kFull ? 128 : step_bytes[v]);
  }
};

// Each also sets its tile shapes: kMaxRows rows per tile, vectors(rows) per call, at most
// kAccumulators of them in all.
struct StepF32 {  // float32: one k per step
  static constexpr int kUnits = 1, kMaxRows = kMaxTileRows, kAcc = kAccumulators;
  static constexpr int vectors(int64_t rows) { return vectors_for(rows); }
  template <int R, int V, bool kFull>
  static inline void step(const Columns<V>& col, int64_t s, const float* a, Vf (&acc)[R][V]) {
    Vf w[V];
    for (int v = 0; v < V; ++v) {
      const float* src = reinterpret_cast<const float*>(col.template at<kFull>(v, s));
      w[v] = kFull ? vload(src) : vload_first(src, col.lanes[v]);
    }
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const Vf x = vset1(a[s * R + r]);
      for (int v = 0; v < V; ++v) acc[r][v] = vfma(x, w[v], acc[r][v]);
    }
  }
};

// bfloat16 pairs widened to float32 in registers: the step runs as two float32 steps, k (the low
// halves, shifted up) then k + 1 (the high halves, masked), each loading its own copy of the weight
// vectors, so a tile holds no more registers than float32's.
struct StepBf16Widened {
  static constexpr int kUnits = 2, kMaxRows = kMaxTileRows, kAcc = kAccumulators;  // x's pair as two floats
  static constexpr int vectors(int64_t rows) { return vectors_for(rows); }
  template <int R, int V, bool kFull>
  static inline void step(const Columns<V>& col, int64_t s, const float* a, Vf (&acc)[R][V]) {
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      Vf w[V];
      for (int v = 0; v < V; ++v) {
        const uint32_t* src = reinterpret_cast<const uint32_t*>(col.template at<kFull>(v, s));
        w[v] = kFull ? load_half(src, half) : load_half_first(src, col.lanes[v], half);
      }
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const Vf x = vset1(a[(s * R + r) * 2 + half]);
        for (int v = 0; v < V; ++v) acc[r][v] = vfma(x, w[v], acc[r][v]);
      }
    }
  }
};

// ---- a tile: start, steps, finish ------------------------------------------------------------------

// Accumulators start from zero at step 0, else from the partial sums parked by the previous chunk
// (`partial`: the tile's rows, `stride` floats apart, one float per column of the call).
template <int R, int V>
inline void start_tile(Vf (&acc)[R][V], int64_t s0, const float* partial, int64_t stride) {
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < V; ++v) acc[r][v] = s0 == 0 ? vzero() : vload(partial + r * stride + v * kLanes);
}

// After the last step: y = acc + bias, rounded once for bfloat16. Before it: park the sums.
template <int R, int V, bool kFull>
inline void finish_tile(const PackedLinearParams& p, const Columns<V>& col, int64_t n0, int64_t m0, bool last,
                        const Vf (&acc)[R][V], float* partial, int64_t stride) {
  if (!last) {
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < V; ++v) vstore(partial + r * stride + v * kLanes, acc[r][v]);
    return;
  }
  const bool bf16 = p.dtype == DType::kBFloat16;
  for (int v = 0; v < V; ++v) {
    const int64_t n = n0 + v * kLanes, lanes = col.lanes[v];
    if (lanes == 0) continue;  // past the last column
    Vf b = vzero();
    if (p.bias)
      b = bf16 ? vload_bf16_first(static_cast<const uint16_t*>(p.bias) + n, lanes)
               : vload_first(static_cast<const float*>(p.bias) + n, lanes);
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const int64_t at = (m0 + r) * p.y_row_stride + n;
      if (bf16)
        vstore_bf16_first(static_cast<uint16_t*>(p.y) + at, vadd(acc[r][v], b), lanes);
      else if (kFull)
        vstore(static_cast<float*>(p.y) + at, vadd(acc[r][v], b));
      else
        vstore_first(static_cast<float*>(p.y) + at, vadd(acc[r][v], b), lanes);
    }
  }
}

template <int V, bool kFull>
inline void prefetch_ahead(const Columns<V>& col, int64_t s) {
  for (int v = 0; v < V; ++v) __builtin_prefetch(col.template at<kFull>(v, s + kPrefetchSteps), 0, 3);
}

// Rows [m0, m0 + R) x columns [n0, n0 + V * kLanes) over steps [s0, s1).
struct TileArgs {
  int64_t n0, m0, s0, s1;
  const void* a;  // the tile's rows of x, step-major
  float* partial;
  int64_t stride;
  bool prefetch;
};

template <class Step, int R, int V, bool kFull>
void tile(const PackedLinearParams& p, const TileArgs& t) {
  const Columns<V> col(p, t.n0);
  const float* a = static_cast<const float*>(t.a);
  Vf acc[R][V];
  start_tile<R, V>(acc, t.s0, t.partial, t.stride);
  for (int64_t s = t.s0; s < t.s1; ++s) {
    if (t.prefetch) prefetch_ahead<V, kFull>(col, s);
    Step::template step<R, V, kFull>(col, s, a, acc);
  }
  finish_tile<R, V, kFull>(p, col, t.n0, t.m0, t.s1 == num_steps(p), acc, t.partial, t.stride);
}

#ifdef FLUID_RT_LINEAR_DPBF16
// bfloat16 on AVX512-BF16: each 32-bit lane of a weight vector is one column's pair of k, each
// entry of `a` one row's pair; vdpbf16ps adds both products into the float32 accumulator.
struct StepBf16Dot {
  static constexpr int kUnits = 1, kMaxRows = kMaxTileRows, kAcc = kAccumulators;
  static constexpr int vectors(int64_t rows) { return vectors_for(rows); }
};

template <int R, int V, bool kFull>
DPBF16_FN void tile_dpbf16(const PackedLinearParams& p, const TileArgs& t) {
  const Columns<V> col(p, t.n0);
  const uint32_t* a = static_cast<const uint32_t*>(t.a);
  Vf acc[R][V];
  start_tile<R, V>(acc, t.s0, t.partial, t.stride);
  for (int64_t s = t.s0; s < t.s1; ++s) {
    if (t.prefetch) prefetch_ahead<V, kFull>(col, s);
    __m512i w[V];
    for (int v = 0; v < V; ++v)
      w[v] = kFull ? _mm512_loadu_si512(col.template at<true>(v, s))
                   : _mm512_maskz_loadu_epi32(lanes_mask(col.lanes[v]), col.template at<false>(v, s));
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) {
      const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[s * R + r]));
      for (int v = 0; v < V; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], x, (__m512bh)w[v]);
    }
  }
  finish_tile<R, V, kFull>(p, col, t.n0, t.m0, t.s1 == num_steps(p), acc, t.partial, t.stride);
}
#endif

// ---- dispatch tables: [rows - 1][vector_index(V)][full] -------------------------------------------

using TileFn = void (*)(const PackedLinearParams&, const TileArgs&);

template <class Step, int R, int V, bool kFull>
constexpr TileFn tile_fn() {
  if constexpr (R * V > Step::kAcc) {
    return nullptr;  // never asked for: a tile's V comes from its call's tallest tile
  } else {
#ifdef FLUID_RT_LINEAR_DPBF16
    if constexpr (std::is_same_v<Step, StepBf16Dot>)
      return &tile_dpbf16<R, V, kFull>;
    else
#endif
      return &tile<Step, R, V, kFull>;
  }
}

using TileTable = std::array<std::array<std::array<TileFn, 2>, 3>, kMaxTileRows>;  // rows past kMaxRows: null

template <class Step, int... I>
constexpr TileTable make_table(std::integer_sequence<int, I...>) {
  return TileTable{{{{{tile_fn<Step, I + 1, 8, false>(), tile_fn<Step, I + 1, 8, true>()},
                      {tile_fn<Step, I + 1, 4, false>(), tile_fn<Step, I + 1, 4, true>()},
                      {tile_fn<Step, I + 1, 2, false>(), tile_fn<Step, I + 1, 2, true>()}}}...}};
}
template <class Step>
constexpr TileTable kTable = make_table<Step>(std::make_integer_sequence<int, Step::kMaxRows>{});

// ---- x, packed per tile ------------------------------------------------------------------------

// Steps [s0, s1) of every tile's rows of x into `a`: tile t (common/parallel.h's row tiles) at word
// row_tile_start(t) * steps * kUnits.
template <class Step>
void pack_rows(const PackedLinearParams& p, uint32_t* a, int64_t s0, int64_t s1) {
  const int64_t steps = num_steps(p);
  constexpr int64_t u = Step::kUnits;
  for (int64_t t = 0, tiles = row_tiles(p.M, Step::kMaxRows); t < tiles; ++t) {
    const int64_t m0 = row_tile_start(p.M, Step::kMaxRows, t),
                  R = row_tile_start(p.M, Step::kMaxRows, t + 1) - m0;
    uint32_t* dst = a + m0 * steps * u;
    for (int64_t r = 0; r < R; ++r) {
      const char* row =
          static_cast<const char*>(p.x) + (m0 + r) * p.x_row_stride * (p.dtype == DType::kFloat32 ? 4 : 2);
      if (u == 1) {  // a float32, or a bfloat16 pair as one word
        for (int64_t s = s0; s < s1; ++s) std::memcpy(dst + s * R + r, row + 4 * s, 4);
      } else {  // a bfloat16 pair widened to two float32
        const uint16_t* x = reinterpret_cast<const uint16_t*>(row);
        for (int64_t s = s0; s < s1; ++s) {
          dst[(s * R + r) * 2] = static_cast<uint32_t>(x[2 * s]) << 16;
          dst[(s * R + r) * 2 + 1] = static_cast<uint32_t>(x[2 * s + 1]) << 16;
        }
      }
    }
  }
}

// ---- calls: which columns each tile function gets ----------------------------------------------

// One call: columns [n0, n0 + V * kLanes), every row tile over every chunk of steps.
template <class Step>
void run_call(const PackedLinearParams& p, int64_t n0, int v, const uint32_t* a, float* partial) {
  const TileTable& table = kTable<Step>;
  const int max_rows = Step::kMaxRows, units = Step::kUnits;
  const int64_t tiles = row_tiles(p.M, max_rows), steps = num_steps(p), cols = int64_t{v} * kLanes;
  const bool full = n0 + cols <= p.N / kLinearPanel * kLinearPanel;  // only 32-wide panels
  const int64_t chunk = tiles == 1 ? steps : std::max<int64_t>(16, kChunkBytes / (4 * cols));
  for (int64_t s0 = 0; s0 < steps; s0 += chunk) {
    const int64_t s1 = std::min(steps, s0 + chunk);
    for (int64_t t = 0; t < tiles; ++t) {
      const int64_t m0 = row_tile_start(p.M, max_rows, t), rows = row_tile_start(p.M, max_rows, t + 1) - m0;
      const TileArgs args{n0, m0, s0, s1, a + m0 * steps * units, partial + m0 * cols, cols, t == 0};
      table[rows - 1][vector_index(v)][full](p, args);
    }
  }
}

// Panels [q0, q1): the tallest tile's vectors_for(rows) per call; a call of several panels takes
// fewer (a power of two) where the range ends, a call narrower than a panel walks its slices.
template <class Step>
void run_panels(const PackedLinearParams& p, int64_t q0, int64_t q1, const uint32_t* a, float* partial) {
  const int v = Step::vectors(row_tile_start(p.M, Step::kMaxRows, 1));
  const int64_t cols = int64_t{v} * kLanes;
  if (cols >= kLinearPanel) {
    for (int64_t q = q0; q < q1;) {
      int64_t take = cols / kLinearPanel;
      while (take > q1 - q) take /= 2;
      run_call<Step>(p, q * kLinearPanel, static_cast<int>(take * kLinearPanel / kLanes), a, partial);
      q += take;
    }
    return;
  }
  for (int64_t q = q0; q < q1; ++q)
    for (int64_t n0 = q * kLinearPanel; n0 < std::min(p.N, (q + 1) * kLinearPanel); n0 += cols)
      run_call<Step>(p, n0, v, a, partial);
}

// x packed per tile, then each thread streams an equal share of the panels (balanced by panels,
// not by calls: 18 panels in calls of 4 would split 12 + 6). Which thread computes a column
// never changes its sums.
template <class Step>
void run(const PackedLinearParams& p, bool parallel) {
  const int64_t panels = linear_num_panels(p.N), steps = num_steps(p), units = Step::kUnits;
  std::unique_ptr<uint32_t[]> a(new uint32_t[p.M * steps * units]);  // no zero-fill
#pragma omp parallel if (parallel)
  {
    std::unique_ptr<float[]> partial(new float[p.M * kLinearPanel * 4]);  // per thread, <= 128 columns
#pragma omp for schedule(static)
    for (int64_t s0 = 0; s0 < steps; s0 += 64) pack_rows<Step>(p, a.get(), s0, std::min(steps, s0 + 64));
    // (the implicit barrier: every thread reads all of `a`)
    const ItemRange share = thread_share(panels);
    run_panels<Step>(p, share.begin, share.end, a.get(), partial.get());
  }
}

// ---- silu(gate) * up -------------------------------------------------------------------------------

// exp(x) as 2^n e^r, r = x - n ln 2 in [-ln 2 / 2, ln 2 / 2] (ln 2 in two parts), e^r by its
// degree-6 Taylor polynomial: about 1 ulp. Plain arithmetic and bit casts, so the row loop below
// vectorizes on every path (std::exp would be a scalar call per element).
inline float exp_approx(float x) {
  x = std::min(std::max(x, -87.f), 88.f);                       // 2^n stays a normal float (a NaN stays NaN)
  const float n = (x * 1.44269504f + 12582912.f) - 12582912.f;  // round to nearest
  const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float e = 1.f / 720;
  e = e * r + 1.f / 120;
  e = e * r + 1.f / 24;
  e = e * r + 1.f / 6;
  e = e * r + 0.5f;
  e = e * r + 1.f;
  e = e * r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

// silu(gate) * up of each row, materialized once (M x K elements, a few KiB while decoding) rather
// than recomputed for every panel that reads it. bfloat16 rounds after the silu and after the
// product, as torch's bfloat16 F.silu(gate) * up does.
void silu_and_mul_rows(const PackedLinearParams& p, void* act) {
  const bool bf16 = p.dtype == DType::kBFloat16;
#pragma omp parallel for schedule(static) if (p.M * p.K >= (1 << 16))
  for (int64_t m = 0; m < p.M; ++m) {
    if (bf16) {
      const uint16_t* x = static_cast<const uint16_t*>(p.x) + m * p.x_row_stride;
      uint16_t* out = static_cast<uint16_t*>(act) + m * p.K;
      for (int64_t k = 0; k < p.K; ++k) {
        const float g = bf16_to_float(x[k]);
        const float s = bf16_to_float(float_to_bf16(g / (1.f + exp_approx(-g))));
        out[k] = float_to_bf16(s * bf16_to_float(x[p.K + k]));
      }
    } else {
      const float* x = static_cast<const float*>(p.x) + m * p.x_row_stride;
      float* out = static_cast<float*>(act) + m * p.K;
      for (int64_t k = 0; k < p.K; ++k) out[k] = x[k] / (1.f + exp_approx(-x[k])) * x[p.K + k];
    }
  }
}

}  // namespace

void packed_linear_run(const PackedLinearParams& p) {
  if (p.M == 0 || p.N == 0) return;
  if (p.silu_and_mul) {
    std::unique_ptr<char[]> act(new char[p.M * p.K * (p.dtype == DType::kFloat32 ? 4 : 2)]);
    silu_and_mul_rows(p, act.get());
    PackedLinearParams q = p;
    q.x = act.get();
    q.x_row_stride = p.K;
    q.silu_and_mul = false;
    return packed_linear_run(q);
  }
  // A parallel region costs a few microseconds: only worth it for a few hundred kFLOP.
  const bool parallel = linear_num_panels(p.N) > 1 && p.M * p.K * p.N >= (1 << 17);
  if (p.dtype == DType::kFloat32) return run<StepF32>(p, parallel);
#if FLUID_RT_ISA_AVX512
  if (cpu_amx_enabled() && cpu_has_amx_bf16()) return packed_linear_amx_bf16(p, parallel);
#endif
#ifdef FLUID_RT_LINEAR_DPBF16
  if (cpu_has_avx512_bf16()) return run<StepBf16Dot>(p, parallel);
#endif
  run<StepBf16Widened>(p, parallel);
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
