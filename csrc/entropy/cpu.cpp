// token_entropy on the CPU: one pass per row with an online (max, sum-exp, sum d*exp) triple.
//
// Work is cut into units (a row, or a piece of a row when rows are fewer than the threads); each unit
// yields a Partial (entropy_range, one copy per CPU path in entropy.isa.cpp), partials of a row are
// merged, and the row is finalized. Rows that contain any non-finite logit are flagged by the fast
// pass and redone by a short scalar pass that applies the documented non-finite rules (rare, so the
// common path carries no per-element branches for them).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "entropy/params.h"
#include "entropy/partial.h"

namespace fluid_rt {
namespace {

using Partial = EntropyPartial;
constexpr float kExpFloor = kEntropyExpFloor;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// ---------------------------------------------------------------------------------------------
// Scalar reference pass for rows with non-finite logits: 16 independent lanes. Non-finite logits
// are skipped; NaN and +inf are flagged, -inf weighs 0.
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
  if (p.s == 0.0f) return {kNaN, kNaN, -kInf, 0};    // every entry is -inf
  return finalize(p, k);
}

}  // namespace

void token_entropy_cpu(const TokenEntropyParams& p) {
  const int64_t rows = p.rows, V = p.vocab;
  if (rows <= 0) return;
  const float k = p.inv_temperature;
  const auto range_stats = FLUID_RT_ISA_PICK(entropy_range);
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
    for (int64_t r = 0; r < rows; ++r) finish_row(r, range_stats(row_ptr(r), p.dtype, 0, V, k));
    return;
  }

  const int64_t piece = ((V + splits - 1) / splits + 63) / 64 * 64;
  std::vector<Partial> parts(static_cast<size_t>(rows * splits));
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(dynamic, 1)
    for (int64_t u = 0; u < rows * splits; ++u) {
      const int64_t r = u / splits, lo = (u % splits) * piece, hi = std::min(V, lo + piece);
      if (lo < hi) parts[u] = range_stats(row_ptr(r), p.dtype, lo, hi, k);
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
