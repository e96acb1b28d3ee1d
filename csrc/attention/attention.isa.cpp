// causal_attention on the CPU: flash-attention style.
//
// Work item = (batch row b, kv head h, tile of the T * G rows of that GQA group), run by OpenMP
// threads. An item walks the keys 0 .. its largest causal limit in tiles of kKeyTile: each K/V tile
// is converted/transposed once and shared by every row (query x query head) of the item, the scores
// of a tile live in a small rows x kKeyTile buffer and are folded into the running output with the
// online softmax (running max m, running denominator l), so no T x S score matrix is ever built.
// The fold restarts at every kChunkKeys-key chunk and the chunks are merged in order (see there).
// Scores are kept in the log2 domain (q is prescaled by softmax_scale * log2(e)) so exp is exp2.
//
// The three inner steps (scores, softmax update, P @ V), the K tile transpose and the row
// conversions are written once over the vector type of csrc/common/vec.h; this file is compiled once
// per CPU path (avx512: 16 lanes, avx2: 8, portable: 4), and cpu.cpp runs the copy of the path in
// use. Tiles and chunks are the same on every path; only the blocking inside a tile follows kLanes.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "attention/params.h"
#include "common/dtype.h"
#include "common/vexp.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

constexpr int kKeyTile = 32;           // keys per tile; a multiple of kKeyBlock
constexpr int kKeyBlock = 2 * kLanes;  // keys per score micro-kernel step (two vectors)
// Rows per micro-kernel step (kSmallRowBlock for small items): 2 R accumulators + 2 key vectors +
// a broadcast must fit the register file (32 zmm on avx512, 16 ymm / xmm otherwise).
constexpr int kRowBlock = kLanes == 16 ? 8 : 4;
constexpr int kSmallRowBlock = 4;  // an item of <= 4 rows (GQA group <= 4 while decoding one token)
constexpr int64_t kMaxRows = 128;  // rows (query x head) per work item
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr float kMinExp2 = -126.f;  // exp2 below this is flushed to 2^-126 (negligible, never denormal)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kPageBytes = 4096;
// Keys are folded in fixed chunks (each from a fresh running max / sum / output, then merged in
// chunk order), whether or not the keys are split across threads. The chunk boundaries depend on
// key positions only, so a row's result is bitwise the same at any batch size, block width or
// split: the decoder reuses outputs of forwards of other widths.
constexpr int64_t kChunkKeys = 256;  // a multiple of kKeyTile
static_assert(kKeyTile % kKeyBlock == 0 && kChunkKeys % kKeyTile == 0, "tiles nest");

// The output row: o * scale rounded to dt (once per row, so plain scalar code).
void store_row(const float* src, int64_t n, DType dt, float scale, void* dst) {
  switch (dt) {
    case DType::kFloat32: {
      float* d = static_cast<float*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = src[i] * scale;
      break;
    }
    case DType::kBFloat16: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_bf16(src[i] * scale);
      break;
    }
    default: {
      uint16_t* d = static_cast<uint16_t*>(dst);
      for (int64_t i = 0; i < n; ++i) d[i] = float_to_fp16(src[i] * scale);
      break;
    }
  }
}

int64_t dtype_size(DType dt) { return dt == DType::kFloat32 ? 4 : 2; }

// ---- micro-kernels ------------------------------------------------------------------------------
// Layouts: Q [rows][D] (prescaled), Kt [D][kKeyTile] (transposed K tile), S [rows][kKeyTile],
// V rows at stride vs, O [rows][D]. Each call handles R rows (kRowBlock, or kSmallRowBlock for an
// item that has no more: one token's GQA group of 1..4 heads would otherwise be half padding).
// Every element's sums run in the same order whatever R and the column split, so a row's result
// does not depend on its neighbours in the block.

inline VecF exp2_vec(VecF x) { return exp2_nonpositive(vmax(x, vset1(kMinExp2))); }

// S[i][0 .. nkb*kKeyBlock) = Q[i] . K[j]: R rows x 2 vectors of keys per step, 2 R independent
// accumulators to hide the FMA latency.
template <int R>
void scores(const float* Q, int64_t D, const float* Kt, float* S, int nkb) {
  for (int kb = 0; kb < nkb; ++kb) {
    const int c = kb * kKeyBlock;
    VecF acc0[R], acc1[R];
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) acc0[i] = acc1[i] = vzero();
    for (int64_t d = 0; d < D; ++d) {
      const VecF k0 = vload(Kt + d * kKeyTile + c);
      const VecF k1 = vload(Kt + d * kKeyTile + c + kLanes);
#pragma GCC unroll 8
      for (int i = 0; i < R; ++i) {
        const VecF qb = vset1(Q[i * D + d]);
        acc0[i] = fma(qb, k0, acc0[i]);
        acc1[i] = fma(qb, k1, acc1[i]);
      }
    }
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      vstore(S + i * kKeyTile + c, acc0[i]);
      vstore(S + i * kKeyTile + c + kLanes, acc1[i]);
    }
  }
}

// Keys of tile [j0, j0 + n) that a row with causal limit lim attends: the first `valid` ones.
inline int valid_keys(int64_t lim, int64_t j0, int n) {
  return static_cast<int>(std::max<int64_t>(0, std::min<int64_t>(lim - j0, n)));
}

// Folds one row's tile of scores s[0 .. valid) into (m, l, o): on return s holds the probabilities
// exp2(s - m_new) for the first n entries (0 past valid) and o is rescaled by exp2(m_old - m_new),
// skipped when the running max stays (most tiles after the first few). A row with no valid key only
// has its s zeroed. s has kKeyTile entries (a multiple of kLanes), so whole vectors are read.
inline void softmax_row(float* s, int valid, int n, float* m, float* l, float* o, int64_t D) {
  const int chunks = (n + kLanes - 1) / kLanes;
  if (valid == 0) {
    for (int c = 0; c < chunks; ++c) vstore(s + c * kLanes, vzero());
    return;
  }
  VecF vm = vset1(kNegInf);
  for (int c = 0; c < chunks; ++c)
    vm = select(first_lanes(valid - c * kLanes), vmax(vload(s + c * kLanes), vm), vm);
  const float m_new = std::max(*m, reduce_max(vm));
  // 0 on the first tile (m = -inf; kMinExp2 makes it 2^-126 times an o that is still 0).
  const float alpha = m_new == *m ? 1.f : first_lane(exp2_vec(vset1(std::max(*m - m_new, kMinExp2))));
  const VecF vnew = vset1(m_new);
  VecF vsum = vzero();
  for (int c = 0; c < chunks; ++c) {
    const VecF pj = select(first_lanes(valid - c * kLanes), exp2_vec(vload(s + c * kLanes) - vnew), vzero());
    vstore(s + c * kLanes, pj);
    vsum = vsum + pj;
  }
  *l = *l * alpha + reduce_add(vsum);
  *m = m_new;
  if (alpha != 1.f) {
    const VecF va = vset1(alpha);
    for (int64_t d = 0; d < D; d += kLanes) vstore(o + d, va * vload(o + d));
  }
}

// softmax_row over the R rows of a micro-kernel block (row i: limit lim[i], s + i * kKeyTile,
// m[i], l[i], o + i * D).
void softmax_rows(float* s, const int64_t* lim, int64_t j0, int n, int R, float* m, float* l, float* o,
                  int64_t D) {
  for (int i = 0; i < R; ++i)
    softmax_row(s + i * kKeyTile, valid_keys(lim[i], j0, n), n, m + i, l + i, o + i * D, D);
}

// Columns [c, c + kLanes C) of O's R rows += sum_j P[i][j] V[j]. Each broadcast of P feeds C FMAs:
// with C = 2 a key costs 2 + R loads for 2 R FMAs, so the FMAs rather than the loads set the pace.
template <int R, int C>
inline void pv_columns(const float* P, const float* V, int64_t vs, float* O, int64_t D, int n, int64_t c) {
  VecF acc[R][C];
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    for (int u = 0; u < C; ++u) acc[i][u] = vload(O + i * D + c + kLanes * u);
  for (int j = 0; j < n; ++j) {
    VecF v[C];
    for (int u = 0; u < C; ++u) v[u] = vload(V + j * vs + c + kLanes * u);
#pragma GCC unroll 8
    for (int i = 0; i < R; ++i) {
      const VecF p = vset1(P[i * kKeyTile + j]);
      for (int u = 0; u < C; ++u) acc[i][u] = fma(p, v[u], acc[i][u]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    for (int u = 0; u < C; ++u) vstore(O + i * D + c + kLanes * u, acc[i][u]);
}

// D is a multiple of 16 for every supported head size: 2 vectors of columns at a time, 1 for an odd
// tail (D = 80 on avx512). Every element still sums its keys in order j = 0, 1, ...
template <int R>
void pv(const float* P, const float* V, int64_t vs, float* O, int64_t D, int n) {
  int64_t c = 0;
  for (; c + 2 * kLanes <= D; c += 2 * kLanes) pv_columns<R, 2>(P, V, vs, O, D, n, c);
  if (c < D) pv_columns<R, 1>(P, V, vs, O, D, n, c);
}

// Row conversion to float, times scale. n is a multiple of kLanes (of 16: every head size).
template <DType DT>
void load_row_as(const void* src, int64_t n, float scale, float* dst) {
  const VecF vs = vset1(scale);
  for (int64_t i = 0; i < n; i += kLanes) vstore(dst + i, load_as<DT>(src, i) * vs);
}

void load_row(const void* src, int64_t n, DType dt, float scale, float* dst) {
  switch (dt) {
    case DType::kFloat32: return load_row_as<DType::kFloat32>(src, n, scale, dst);
    case DType::kBFloat16: return load_row_as<DType::kBFloat16>(src, n, scale, dst);
    default: return load_row_as<DType::kFloat16>(src, n, scale, dst);
  }
}

// K rows src + j * stride_bytes (j < n) into Kt [D][kKeyTile], zero-filled up to n_pad keys:
// kLanes rows at a time, converted into tmp [kLanes][D] (rows past n are zero), then transposed in
// registers kLanes x kLanes at a time.
void load_k_tile(const char* src, int64_t stride_bytes, int n, int n_pad, int64_t D, DType dt, float* tmp,
                 float* kt) {
  for (int j0 = 0; j0 < n_pad; j0 += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      if (j0 + j < n) {
        load_row(src + (j0 + j) * stride_bytes, D, dt, 1.f, tmp + j * D);
      } else {
        for (int64_t d = 0; d < D; d += kLanes) vstore(tmp + j * D + d, vzero());
      }
    }
    for (int64_t d0 = 0; d0 < D; d0 += kLanes) {
      VecF r[kLanes];
      for (int j = 0; j < kLanes; ++j) r[j] = vload(tmp + j * D + d0);
      transpose(r);
      for (int e = 0; e < kLanes; ++e) vstore(kt + (d0 + e) * kKeyTile + j0, r[e]);
    }
  }
}

using ScoresFn = void (*)(const float*, int64_t, const float*, float*, int);
using PvFn = void (*)(const float*, const float*, int64_t, float*, int64_t, int);

// ---- one work item ------------------------------------------------------------------------------

// A thread's buffers for its items (thread_scratch: kept between calls, since a decode step makes
// one small call per layer and allocating them each time cost more than the attention itself).
// Every value is written before it is read, so what an earlier call left there is never used.
struct Scratch {
  std::vector<float> q, o, s, kt, v, krow, m, l;
  std::vector<float> acc_o, acc_m, acc_l;  // the chunks merged so far (fold_keys)
  std::vector<int64_t> lim;
  void reserve(int64_t rows_pad, int64_t D) {
    q.resize(rows_pad * D);
    o.resize(rows_pad * D);
    acc_o.resize(rows_pad * D);
    acc_m.resize(rows_pad);
    acc_l.resize(rows_pad);
    s.resize(rows_pad * kKeyTile);
    kt.resize(D * kKeyTile);
    v.resize(kKeyTile * D);
    krow.resize(kLanes * D);
    m.resize(rows_pad);
    l.resize(rows_pad);
    lim.resize(rows_pad);
  }
};

Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Rows r0 .. r1 of (batch row b, kv head h); row r is query r / G of query head h * G + r % G.
// An item's rows are loaded once (load_rows), folded over one or more key ranges (attend_keys:
// the running output o, max m and denominator l in the scratch), then normalized and stored
// (store_rows), or, when the keys are split across threads, parked and merged (merge_splits).
struct RowRange {
  int64_t b, h, r0, r1;
  int64_t rows() const { return r1 - r0; }
  int64_t block() const { return rows() <= kSmallRowBlock ? kSmallRowBlock : kRowBlock; }
  int64_t rows_pad() const { return (rows() + block() - 1) / block() * block(); }
};

// Keys the rows attend: 0 .. seqlen + (last row's query) inclusive.
int64_t key_end(const CausalAttentionParams& p, const RowRange& rr) {
  return p.cache_seqlens[rr.b] + (rr.r1 - 1) / p.group() + 1;
}

void load_rows(const CausalAttentionParams& p, const RowRange& rr, Scratch& w) {
  const int64_t D = p.head_dim, G = p.group(), rows = rr.rows(), rows_pad = rr.rows_pad();
  const int64_t esize = dtype_size(p.dtype);
  const int64_t seqlen = p.cache_seqlens[rr.b];
  w.reserve(rows_pad, D);
  const float q_scale = p.softmax_scale * kLog2e;
  for (int64_t i = 0; i < rows_pad; ++i) {
    float* qi = w.q.data() + i * D;
    if (i < rows) {
      const int64_t t = (rr.r0 + i) / G, hq = rr.h * G + (rr.r0 + i) % G;
      const char* src = static_cast<const char*>(p.q) +
                        (rr.b * p.q_stride_b + t * p.q_stride_t + hq * p.q_stride_h) * esize;
      load_row(src, D, p.dtype, q_scale, qi);
      w.lim[i] = seqlen + t + 1;  // keys 0 .. seqlen + t
    } else {
      std::fill(qi, qi + D, 0.f);
      w.lim[i] = 0;  // padding row: never attends
    }
  }
}

// Folds keys [k_begin, k_end) (k_begin a multiple of kKeyTile) into fresh o, m, l. Keys up to
// prefetch_end (the item's end) are worth prefetching: the next chunk follows on this thread.
void attend_keys(const CausalAttentionParams& p, const RowRange& rr, int64_t k_begin, int64_t k_end,
                 int64_t prefetch_end, Scratch& w) {
  const int64_t D = p.head_dim, rows_pad = rr.rows_pad(), block = rr.block();
  const ScoresFn scores_fn = block == kRowBlock ? scores<kRowBlock> : scores<kSmallRowBlock>;
  const PvFn pv_fn = block == kRowBlock ? pv<kRowBlock> : pv<kSmallRowBlock>;
  const int64_t esize = dtype_size(p.dtype);
  const int64_t cache_row = p.cache_batch_idx ? p.cache_batch_idx[rr.b] : rr.b;
  std::fill(w.m.begin(), w.m.begin() + rows_pad, kNegInf);
  std::fill(w.l.begin(), w.l.begin() + rows_pad, 0.f);
  std::fill(w.o.begin(), w.o.begin() + rows_pad * D, 0.f);

  const int64_t cache_stride = p.heads_kv * D;  // elements between consecutive positions
  for (int64_t j0 = k_begin; j0 < k_end; j0 += kKeyTile) {
    const int n = static_cast<int>(std::min<int64_t>(kKeyTile, k_end - j0));
    const int nkb = (n + kKeyBlock - 1) / kKeyBlock;

    // Consecutive positions of one head are heads_kv * D elements apart. From a page apart on, the
    // hardware prefetchers do not follow them: ask for the next tile's K and V rows now. (Closer
    // rows they follow, and there the prefetch loop only costs: up to 1.5x on a short item whose
    // cache is in L3, e.g. one token of a 3-head GQA group.)
    if (cache_stride * esize >= kPageBytes) {
      const int64_t next_n = std::min<int64_t>(kKeyTile, prefetch_end - j0 - kKeyTile);
      const int64_t row_bytes = D * esize;
      for (int64_t j = 0; j < next_n; ++j) {
        const int64_t off = p.cache_offset(cache_row, j0 + kKeyTile + j, rr.h) * esize;
        for (int64_t c = 0; c < row_bytes; c += 64) {
          __builtin_prefetch(static_cast<const char*>(p.k_cache) + off + c);
          __builtin_prefetch(static_cast<const char*>(p.v_cache) + off + c);
        }
      }
    }

    // K tile, transposed to [D][kKeyTile] so scores are vector FMAs without horizontal sums.
    load_k_tile(static_cast<const char*>(p.k_cache) + p.cache_offset(cache_row, j0, rr.h) * esize,
                cache_stride * esize, n, nkb * kKeyBlock, D, p.dtype, w.krow.data(), w.kt.data());

    // V tile, copied (and converted) into a dense buffer: read in place, its rows would sit
    // heads_kv * D elements apart, often a multiple of 4 KiB, all in the same L1 sets.
    const char* vsrc = static_cast<const char*>(p.v_cache) + p.cache_offset(cache_row, j0, rr.h) * esize;
    for (int j = 0; j < n; ++j)
      load_row(vsrc + j * cache_stride * esize, D, p.dtype, 1.f, w.v.data() + j * D);
    const float* vt = w.v.data();
    const int64_t vs = D;

    for (int64_t rb = 0; rb < rows_pad; rb += block) {
      int64_t lim_max = 0;
      for (int i = 0; i < block; ++i) lim_max = std::max(lim_max, w.lim[rb + i]);
      if (lim_max <= j0) continue;  // the whole block is masked in this tile (and every later one)
      float* s = w.s.data() + rb * kKeyTile;
      scores_fn(w.q.data() + rb * D, D, w.kt.data(), s, nkb);
      softmax_rows(s, w.lim.data() + rb, j0, n, static_cast<int>(block), &w.m[rb], &w.l[rb],
                   w.o.data() + rb * D, D);
      pv_fn(s, vt, vs, w.o.data() + rb * D, D, n);
    }
  }
}

// Merges one chunk's (m_c, l_c, o_c) of a row into the running (m, l, o). A chunk with no key for
// the row (l_c == 0) is skipped; the first one with keys is copied. Both the single-thread fold and
// the split-KV merge go through here, in chunk order, so they round alike.
void merge_chunk(float& m, float& l, float* o, float m_c, float l_c, const float* o_c, int64_t D) {
  if (l_c == 0.f) return;
  if (l == 0.f) {
    m = m_c, l = l_c;
    std::copy(o_c, o_c + D, o);
    return;
  }
  const float m_new = std::max(m, m_c);
  const float a = std::exp2(m - m_new), b = std::exp2(m_c - m_new);
  l = l * a + l_c * b;
  for (int64_t d = 0; d < D; ++d) o[d] = o[d] * a + o_c[d] * b;
  m = m_new;
}

// Folds keys [0, k_end) chunk by chunk into acc_m, acc_l, acc_o.
void fold_keys(const CausalAttentionParams& p, const RowRange& rr, int64_t k_end, Scratch& w) {
  const int64_t D = p.head_dim;
  std::fill(w.acc_l.begin(), w.acc_l.begin() + rr.rows(), 0.f);
  for (int64_t c0 = 0; c0 < k_end; c0 += kChunkKeys) {
    attend_keys(p, rr, c0, std::min(k_end, c0 + kChunkKeys), k_end, w);
    for (int64_t i = 0; i < rr.rows(); ++i)
      merge_chunk(w.acc_m[i], w.acc_l[i], w.acc_o.data() + i * D, w.m[i], w.l[i], w.o.data() + i * D, D);
  }
}

// out = o / l and lse = (m + log2 l) ln 2 for row i of the range (l >= 1: every row sees key 0).
void store_row_result(const CausalAttentionParams& p, const RowRange& rr, int64_t i, const float* o, float m,
                      float l) {
  const int64_t D = p.head_dim, G = p.group(), esize = dtype_size(p.dtype);
  const int64_t t = (rr.r0 + i) / G, hq = rr.h * G + (rr.r0 + i) % G;
  const int64_t out_row = (rr.b * p.seqlen_q + t) * p.heads_q + hq;
  store_row(o, D, p.dtype, 1.f / l, static_cast<char*>(p.out) + out_row * D * esize);
  p.lse[out_row] = (m + std::log2(l)) * kLn2;
}

// Copies the new keys/values into cache slots seqlen .. seqlen + T - 1 of each row's cache row.
void append_new_kv(const CausalAttentionParams& p) {
  const int64_t D = p.head_dim, esize = dtype_size(p.dtype);
  const int64_t n = p.batch * p.seqlen_q * p.heads_kv;
  // A decode step's few rows are copied faster than a thread team starts.
#pragma omp parallel for schedule(static) if (n * D * esize >= (1 << 16))
  for (int64_t idx = 0; idx < n; ++idx) {
    const int64_t h = idx % p.heads_kv, t = (idx / p.heads_kv) % p.seqlen_q,
                  b = idx / (p.heads_kv * p.seqlen_q);
    const int64_t cache_row = p.cache_batch_idx ? p.cache_batch_idx[b] : b;
    const int64_t dst = p.cache_offset(cache_row, p.cache_seqlens[b] + t, h) * esize;
    const char* ks = static_cast<const char*>(p.k_new) +
                     (b * p.k_new_stride_b + t * p.k_new_stride_t + h * p.k_new_stride_h) * esize;
    const char* vsrc = static_cast<const char*>(p.v_new) +
                       (b * p.v_new_stride_b + t * p.v_new_stride_t + h * p.v_new_stride_h) * esize;
    std::memcpy(static_cast<char*>(p.k_cache) + dst, ks, D * esize);
    std::memcpy(static_cast<char*>(p.v_cache) + dst, vsrc, D * esize);
  }
}

// Rows per work item: at most kMaxRows, and fewer where the heads alone would leave threads idle
// (a block of a few tokens over a short cache: SmolLM2 has 3 kv heads), down to kMinSplitRows. A
// row's result does not depend on its tile, so this changes no bits; below that size the keys are
// split instead (causal_attention_run).
constexpr int64_t kMinSplitRows = 4;
int64_t row_tile(int64_t total_rows, int64_t heads, int64_t threads) {
  const int64_t tile = attention_row_tile(total_rows, kMaxRows);
  const int64_t tiles = (total_rows + tile - 1) / tile;
  const int64_t wanted = (2 * threads + heads - 1) / heads;  // tiles per head for 2 items a thread
  if (tiles >= wanted) return tile;
  return std::min(tile, std::max(kMinSplitRows, (total_rows + wanted - 1) / wanted));
}

}  // namespace

void causal_attention_run(const CausalAttentionParams& p) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return;
  if (p.k_new != nullptr) append_new_kv(p);

  const int64_t total_rows = p.seqlen_q * p.group();
  const int64_t heads = p.batch * p.heads_kv;
  const int64_t threads = cpu_max_threads();
  const int64_t tile = row_tile(total_rows, heads, threads);
  const int64_t tiles = (total_rows + tile - 1) / tile;
  const int64_t items = heads * tiles;
  // Largest causal ranges (last row tiles) first, so the dynamic schedule balances the threads.
  auto item_rows = [&](int64_t it) {
    const int64_t tile_idx = tiles - 1 - it / heads;
    const int64_t r0 = tile_idx * tile;
    return RowRange{(it % heads) / p.heads_kv, it % p.heads_kv, r0, std::min(total_rows, r0 + tile)};
  };

  // Decoding has few items (batch x kv heads, one row tile each) and long key ranges: too few to
  // keep every thread busy. Then the chunks of each item are attended in parallel and merged
  // afterwards (flash-decoding's split-KV), so a single sequence's attention uses every core.
  int64_t max_keys = 0;
  for (int64_t b = 0; b < p.batch; ++b)
    max_keys = std::max<int64_t>(max_keys, p.cache_seqlens[b] + p.seqlen_q);
  const int64_t chunks = (max_keys + kChunkKeys - 1) / kChunkKeys;

  if (items >= 2 * threads || chunks == 1) {
#pragma omp parallel
    {
      Scratch& w = thread_scratch();
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < items; ++it) {
        const RowRange rr = item_rows(it);
        load_rows(p, rr, w);
        fold_keys(p, rr, key_end(p, rr), w);
        for (int64_t i = 0; i < rr.rows(); ++i)
          store_row_result(p, rr, i, w.acc_o.data() + i * p.head_dim, w.acc_m[i], w.acc_l[i]);
      }
    }
    return;
  }

  // Unit (item, c) attends chunk c of that item's keys (none past the item's causal end: l = 0).
  const int64_t D = p.head_dim, tile_pad = (tile + kRowBlock - 1) / kRowBlock * kRowBlock;
  std::vector<float> part_o(items * chunks * tile_pad * D), part_m(items * chunks * tile_pad),
      part_l(items * chunks * tile_pad);
#pragma omp parallel
  {
    Scratch& w = thread_scratch();
#pragma omp for schedule(dynamic, 1)
    for (int64_t unit = 0; unit < items * chunks; ++unit) {
      const int64_t it = unit / chunks, c = unit % chunks;
      const RowRange rr = item_rows(it);
      const int64_t end = key_end(p, rr);
      const int64_t k0 = std::min(end, c * kChunkKeys), k1 = std::min(end, k0 + kChunkKeys);
      load_rows(p, rr, w);
      attend_keys(p, rr, k0, k1, k1, w);  // an empty range leaves m = -inf, l = 0, o = 0
      std::copy(w.o.begin(), w.o.begin() + rr.rows() * D, part_o.begin() + unit * tile_pad * D);
      std::copy(w.m.begin(), w.m.begin() + rr.rows(), part_m.begin() + unit * tile_pad);
      std::copy(w.l.begin(), w.l.begin() + rr.rows(), part_l.begin() + unit * tile_pad);
    }
    // (the implicit barrier: every chunk of an item is done before it is merged)
    std::vector<float> o(D);
#pragma omp for schedule(static)
    for (int64_t ir = 0; ir < items * tile; ++ir) {
      const int64_t it = ir / tile, i = ir % tile;
      const RowRange rr = item_rows(it);
      if (i >= rr.rows()) continue;
      float m = kNegInf, l = 0.f;
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t at = (it * chunks + c) * tile_pad + i;
        merge_chunk(m, l, o.data(), part_m[at], part_l[at], part_o.data() + at * D, D);
      }
      store_row_result(p, rr, i, o.data(), m, l);
    }
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
