// token_entropy's hot loop, compiled once per CPU path (csrc/common/vec.h): kLanes logits per
// vector, U vectors per step, a per-lane (m, s, t, argmax) with one (s, t) pair per vector slot, and
// a polynomial exp (csrc/common/vexp.h). NaN and +inf are only flagged (the row is redone by
// cpu.cpp's rules); -inf weighs exactly 0 (d is clamped to kExpFlushBelow, where exp gives 0).
#include "common/prefetch.h"
#include "common/vexp.h"
#include "entropy/partial.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

constexpr int U = 4;  // vectors per step

// Software prefetch one 4 KiB page ahead, into L1: the hardware streamer stops at page boundaries,
// and without it the loads and the exp polynomial take turns instead of overlapping. Measured on a
// 39 MB input from DRAM (2 threads, Xeon): avx2 4.2 -> 2.8 ms, avx512 3.4 -> 2.7, portable 15.6 ->
// 6.5; a non-temporal hint or 1 KiB ahead gained about half of that. Prefetches never fault, so the
// last page of a row may point past its end.
constexpr int64_t kPrefetchBytes = 4096;

struct Lanes {
  VecF m = vset1(-kInf);
  VecI arg = iset1(0);
  VecF s[U], t[U];
  MaskF bad = no_lanes();
  Lanes() {
    for (int u = 0; u < U; ++u) s[u] = t[u] = vzero();
  }

  // Raise the per-lane max to cover x[0 .. nvec) (lanes in `valid`), with its first index, and
  // rescale every (s, t) slot. Lanes with no element yet (m = -inf) get dm = floor and e ~ 0 while
  // s = t = 0: they stay 0.
  void raise_max(const VecF* x, const MaskF* valid, int nvec, int64_t base, VecF kv) {
    VecF mn = m;
    for (int u = 0; u < nvec; ++u) {
      const MaskF gt = (x[u] > mn) & valid[u];
      mn = select(gt, x[u], mn);
      arg = select(gt, iset1(static_cast<int32_t>(base + kLanes * u)) + iota(), arg);
    }
    const VecF dm = vmax((m - mn) * kv, vset1(kExpFlushBelow));
    const VecF e = exp_nonpositive(dm);
    for (int u = 0; u < U; ++u) {
      t[u] = fma(dm, s[u], t[u]) * e;
      s[u] = s[u] * e;
    }
    m = mn;
  }

  EntropyPartial reduce(float k) const {
    alignas(64) float mv[kLanes], sv[U][kLanes], tv[U][kLanes];
    alignas(64) int32_t av[kLanes];
    vstore(mv, m);
    istore(av, arg);
    for (int u = 0; u < U; ++u) vstore(sv[u], s[u]), vstore(tv[u], t[u]);
    EntropyPartial out;
    for (int l = 0; l < kLanes; ++l) {
      EntropyPartial p;
      p.m = mv[l];
      p.arg = av[l];
      for (int u = 0; u < U; ++u) p.s += sv[u][l], p.t += tv[u][l];
      merge_into(out, p, k);
    }
    return out;
  }
};

// Prefetch the cache lines kPrefetchBytes past the step that starts at element i.
template <DType D>
inline void prefetch_step(const void* row, int64_t i) {
  constexpr int64_t kElementBytes = D == DType::kFloat32 ? 4 : 2;
  prefetch_span(static_cast<const char*>(row) + i * kElementBytes + kPrefetchBytes,
                kLanes * U * kElementBytes);
}

template <DType D>
EntropyPartial range_vec(const void* row, int64_t lo, int64_t hi, float k) {
  const VecF kv = vset1(k), floor = vset1(kExpFlushBelow);
  Lanes a;
  int64_t i = lo;
  for (; i + kLanes * U <= hi; i += kLanes * U) {
    prefetch_step<D>(row, i);
    VecF x[U];
    for (int u = 0; u < U; ++u) x[u] = load_as<D>(row, i + kLanes * u);
    // NaN detection: an unordered compare is true when either operand is NaN.
    a.bad = a.bad | unordered(x[0], x[1]) | unordered(x[2], x[3]);
    const VecF cm = vmax(vmax(x[0], x[1]), vmax(x[2], x[3]));
    if (any(cm > a.m)) {
      const MaskF all = first_lanes(kLanes);
      const MaskF valid[U] = {all, all, all, all};
      a.raise_max(x, valid, U, i, kv);
    }
    for (int u = 0; u < U; ++u) {
      const VecF d = vmax((x[u] - a.m) * kv, floor);
      const VecF e = exp_nonpositive(d);
      a.s[u] = a.s[u] + e;
      a.t[u] = fma(d, e, a.t[u]);
    }
  }
  for (; i < hi; i += kLanes) {  // tail: vectors of up to kLanes, the rest of the lanes masked off
    const int64_t n = hi - i < kLanes ? hi - i : kLanes;
    const MaskF valid = first_lanes(n);
    const VecF x = n == kLanes ? load_as<D>(row, i) : load_first_as<D>(row, i, n);
    a.bad = a.bad | (unordered(x, x) & valid);
    if (any((x > a.m) & valid)) a.raise_max(&x, &valid, 1, i, kv);
    const VecF d = vmax((x - a.m) * kv, floor);
    const VecF e = exp_nonpositive(d);
    a.s[0] = select(valid, a.s[0] + e, a.s[0]);
    a.t[0] = select(valid, fma(d, e, a.t[0]), a.t[0]);
  }
  // A +inf logit becomes its lane's max (and leaves that lane with s = 0): flag it.
  a.bad = a.bad | (a.m == vset1(kInf));
  EntropyPartial out = a.reduce(k);
  out.nonfinite = any(a.bad);
  return out;
}

}  // namespace

EntropyPartial entropy_range(const void* row, DType dt, int64_t lo, int64_t hi, float k) {
  switch (dt) {
    case DType::kFloat32: return range_vec<DType::kFloat32>(row, lo, hi, k);
    case DType::kBFloat16: return range_vec<DType::kBFloat16>(row, lo, hi, k);
    default: return range_vec<DType::kFloat16>(row, lo, hi, k);
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
