// gated_lora_'s row kernel, compiled once per CPU path (csrc/common/vec.h). Both products are rows
// times a row-major matrix, out[r][0 .. n) = sum_k v[r][k] * w[k][0 .. n): a tile of up to
// kRowTile rows and kBlock vectors of kLanes outputs accumulate in registers while k runs, so each
// matrix is read once per tile and no horizontal sums are needed. Every row sees the same FMAs in
// the same order whatever its tile, so its result does not depend on the other rows.
#include <algorithm>
#include <memory>

#include "common/prefetch.h"
#include "common/vexp.h"
#include "lora/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

constexpr int kRowTile = kLoraRowTile;
constexpr int kBlock = kLanes >= 16 ? 4 : 2;  // output vectors per pass: kRowTile x kBlock accumulators
// Each step's matrix row is prefetched a page ahead: a decode step finds every layer's factors in
// DRAM (the base weights streamed in between), in rows of 32-128 bytes whose page crossings the
// hardware streamer does not follow. One mask row's four calls per layer: 13.4 -> 11.2 us per call
// on avx2 (Xeon, in a forward; a multiple of 1 KiB ahead measured alike).
constexpr int64_t kPrefetchBytes = 4096;

// A row-major operand: element (i, j) at p[i * stride + j].
template <class T>
struct Mat {
  const T* p;
  int64_t stride;
};

// acc[r][0 .. NV) += v[r][i] * w[i][0 .. NV kLanes) for R rows: one step of the k loop. The small
// loops are unrolled outright so that every accumulator index is a constant and the accumulators
// stay in registers (without it GCC kept them on the stack: a store-bound loop at twice the FMA
// time).
template <DType WD, int R, int NV, bool kFull>
inline void rows_mat_step(Mat<float> v, int64_t i, Mat<char> w, VecF (&acc)[R][NV], int64_t tail) {
  constexpr int64_t es = WD == DType::kFloat32 ? 4 : 2;
  const char* row = w.p + i * w.stride * es;
  prefetch_span(row + kPrefetchBytes, NV * kLanes * es);
  VecF wv[NV];
#pragma GCC unroll 8
  for (int b = 0; b < NV; ++b)
    wv[b] = kFull || b < NV - 1 ? load_as<WD>(row, b * kLanes) : load_first_as<WD>(row, b * kLanes, tail);
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    const VecF vi = vset1(v.p[r * v.stride + i]);
#pragma GCC unroll 8
    for (int b = 0; b < NV; ++b) acc[r][b] = fma(vi, wv[b], acc[r][b]);
  }
}

// The k loop: step i feeds chain i % C (a compile-time index, the last partial round too); the
// chains are summed into the first.
template <DType WD, int R, int NV, int C, bool kFull>
inline void rows_mat_loop(Mat<float> v, int64_t k, Mat<char> w, VecF (&acc)[C][R][NV], int64_t tail) {
  int64_t i = 0;
  for (; i + C <= k; i += C) {
#pragma GCC unroll 8
    for (int c = 0; c < C; ++c) rows_mat_step<WD, R, NV, kFull>(v, i + c, w, acc[c], tail);
  }
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
    if (i + c < k) rows_mat_step<WD, R, NV, kFull>(v, i + c, w, acc[c], tail);
#pragma GCC unroll 8
  for (int c = 1; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int b = 0; b < NV; ++b) acc[0][r][b] = acc[0][r][b] + acc[c][r][b];
}

// out[r][0 .. NV kLanes) of v @ w for R rows, the last vector holding `tail` (<= kLanes) outputs;
// w's elements are of dtype WD.
// Narrow outputs (the rank-wide first product) would be one long chain of dependent FMAs per
// vector: k is dealt round-robin to C chains instead. C depends on NV alone, so a row's sums are
// the same whatever R.
template <DType WD, int R, int NV>
void rows_mat_block(Mat<float> v, int64_t k, Mat<char> w, float* out, int64_t out_stride, int64_t tail) {
  constexpr int C = kBlock / NV > 1 ? kBlock / NV : 1;
  VecF acc[C][R][NV];
#pragma GCC unroll 8
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int b = 0; b < NV; ++b) acc[c][r][b] = vzero();
  if (tail == kLanes)  // both loops instantiated: no branch in the loop body
    rows_mat_loop<WD, R, NV, C, true>(v, k, w, acc, tail);
  else
    rows_mat_loop<WD, R, NV, C, false>(v, k, w, acc, tail);
  for (int r = 0; r < R; ++r) {
    float* o = out + r * out_stride;
    for (int b = 0; b < NV - 1; ++b) vstore(o + b * kLanes, acc[0][r][b]);
    vstore_first(o + (NV - 1) * kLanes, acc[0][r][NV - 1], tail);
  }
}

// rows_mat_block for nv (1..kBlock) vectors.
template <DType WD, int R, int NV = 1>
void rows_mat_nv(int nv, Mat<float> v, int64_t k, Mat<char> w, float* out, int64_t out_stride, int64_t tail) {
  if constexpr (NV < kBlock) {
    if (nv != NV) return rows_mat_nv<WD, R, NV + 1>(nv, v, k, w, out, out_stride, tail);
  }
  rows_mat_block<WD, R, NV>(v, k, w, out, out_stride, tail);
}

// out[r][0 .. n) = v[r][0 .. k) @ w[k][n] for R rows (w's elements of dtype WD).
template <DType WD, int R>
void rows_mat(Mat<float> v, int64_t k, Mat<char> w, int64_t n, float* out, int64_t out_stride) {
  constexpr int64_t es = WD == DType::kFloat32 ? 4 : 2;
  for (int64_t j0 = 0; j0 < n; j0 += kBlock * kLanes) {
    const int64_t width = std::min<int64_t>(kBlock * kLanes, n - j0);
    const int nv = static_cast<int>((width + kLanes - 1) / kLanes);
    rows_mat_nv<WD, R>(nv, v, k, {w.p + j0 * es, w.stride}, out + j0, out_stride, width - (nv - 1) * kLanes);
  }
}

// x' of one row, widened to float32 into xf [in].
template <DType D>
void input_row(const GatedLoraParams& p, const void* x, float* xf) {
  for (int64_t i = 0; i < p.in; i += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, p.in - i);
    const VecF a = load_n<D>(x, i, n);
    store_n<DType::kFloat32>(xf, i, p.silu_and_mul ? silu(a) * load_n<D>(x, p.in + i, n) : a, n);
  }
}

// y[r][c0 .. c1) += d[r][c0 .. c1) for R rows.
template <DType D, int R>
void add_delta(const GatedLoraParams& p, const int64_t* rows, const float* d, int64_t c0, int64_t c1) {
  const int64_t es = D == DType::kFloat32 ? 4 : 2;
  for (int r = 0; r < R; ++r) {
    char* y = static_cast<char*>(p.y) + rows[r] * p.y_stride * es;
    for (int64_t j = c0; j < c1; j += kLanes) {
      const int64_t n = std::min<int64_t>(kLanes, c1 - j);
      store_n<D>(y, j, load_n<D>(y, j, n) + load_n<DType::kFloat32>(d + r * p.out, j, n), n);
    }
  }
}

// The delta of R rows (rows[0 .. R) of p) added to y at output pieces [k0, k1); x and y of dtype
// D, the factors of WD. scratch: R x (in + rank + out) floats.
template <DType D, DType WD, int R>
void lora_tile(const GatedLoraParams& p, const int64_t* rows, int64_t k0, int64_t k1, float* scratch) {
  constexpr int64_t wes = WD == DType::kFloat32 ? 4 : 2;
  const char *a_t = static_cast<const char*>(p.a_t), *b_t = static_cast<const char*>(p.b_t);
  float *xf = scratch, *h = xf + R * p.in, *d = h + R * p.rank;
  const int64_t es = D == DType::kFloat32 ? 4 : 2;
  for (int r = 0; r < R; ++r)
    input_row<D>(p, static_cast<const char*>(p.x) + rows[r] * p.x_stride * es, xf + r * p.in);
  rows_mat<WD, R>({xf, p.in}, p.in, {a_t, p.rank}, p.rank, h, p.rank);
  const int64_t part_rank = p.rank / p.num_parts, piece_bytes = part_rank * kLoraPiece * wes;
  for (int64_t q = 0, first = 0; q < p.num_parts; ++q) {  // part q's columns take h's q-th rank slice
    const int64_t b0 = lora_part_begin(p, q), b1 = lora_part_end(p, q);
    const int64_t pieces = (b1 - b0 + kLoraPiece - 1) / kLoraPiece;
    const int64_t lo = std::max(k0, first), hi = std::min(k1, first + pieces);
    for (int64_t k = lo; k < hi; ++k) {
      const int64_t c0 = b0 + (k - first) * kLoraPiece, width = std::min(kLoraPiece, b1 - c0);
      rows_mat<WD, R>({h + q * part_rank, p.rank}, part_rank, {b_t + k * piece_bytes, kLoraPiece}, width,
                      d + c0, p.out);
    }
    if (lo < hi)
      add_delta<D, R>(p, rows, d, b0 + (lo - first) * kLoraPiece,
                      std::min(b1, b0 + (hi - first) * kLoraPiece));
    first += pieces;
  }
}

// lora_tile for `count` (1..kRowTile) rows.
template <DType D, DType WD, int R = 1>
void lora_tile_n(const GatedLoraParams& p, const int64_t* rows, int count, int64_t k0, int64_t k1,
                 float* scratch) {
  if constexpr (R < kRowTile) {
    if (count != R) return lora_tile_n<D, WD, R + 1>(p, rows, count, k0, k1, scratch);
  }
  lora_tile<D, WD, R>(p, rows, k0, k1, scratch);
}

template <DType D>
void lora_tile_any(const GatedLoraParams& p, const int64_t* rows, int count, int64_t k0, int64_t k1,
                   float* scratch) {
  if (p.factor_dtype == DType::kFloat32)
    lora_tile_n<D, DType::kFloat32>(p, rows, count, k0, k1, scratch);
  else
    lora_tile_n<D, DType::kBFloat16>(p, rows, count, k0, k1, scratch);
}

}  // namespace

void gated_lora_rows(const GatedLoraParams& p, int64_t r0, int64_t r1, int64_t k0, int64_t k1) {
  const int64_t tile = std::min<int64_t>(kRowTile, r1 - r0);
  // Uninitialized: every value is written before it is read (zeroing ~50 KB per call is wasted).
  const std::unique_ptr<float[]> scratch(new float[static_cast<size_t>(tile * (p.in + p.rank + p.out))]);
  for (int64_t i = r0; i < r1; i += kRowTile) {
    const int count = static_cast<int>(std::min<int64_t>(kRowTile, r1 - i));
    if (p.dtype == DType::kFloat32)
      lora_tile_any<DType::kFloat32>(p, p.rows + i, count, k0, k1, scratch.get());
    else
      lora_tile_any<DType::kBFloat16>(p, p.rows + i, count, k0, k1, scratch.get());
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
