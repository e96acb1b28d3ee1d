// token_entropy on the CPU, shared by the per-path kernels (entropy.isa.cpp) and the driver
// (cpu.cpp): a range of a row reduces to a Partial, partials of a row merge, and the row finalizes.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/dtype.h"
#include "common/isa.h"

namespace fluid_rt {

// exp(d) for d below this rounds to exactly 0 in float32 (below half the smallest denormal):
// clamping there keeps d finite (so d * exp(d) is 0, never -inf * 0) and changes no float32 result.
// The clamp is written max(d, floor), which also maps the NaN of (-inf) - (-inf) to the floor: -inf
// logits thus weigh exactly 0, and NaN logits are detected separately.
constexpr float kEntropyExpFloor = -110.0f;

// Statistics of the finite logits of a range of a row (see params.h). s == 0 means "no element".
struct EntropyPartial {
  float m = -std::numeric_limits<float>::infinity();
  float s = 0.0f;
  float t = 0.0f;
  int64_t arg = 0;
  bool nonfinite = false;  // the range holds a NaN or a +inf: the row takes the slow path
};

// a <- a (+) b. Larger max wins the argmax; equal maxima keep the smaller index (first occurrence).
inline void merge_into(EntropyPartial& a, const EntropyPartial& b, float k) {
  a.nonfinite |= b.nonfinite;
  if (b.s == 0.0f) return;
  if (a.s == 0.0f) {
    a.m = b.m, a.s = b.s, a.t = b.t, a.arg = b.arg;
    return;
  }
  const float m = std::max(a.m, b.m);
  const float da = std::max((a.m - m) * k, kEntropyExpFloor), db = std::max((b.m - m) * k, kEntropyExpFloor);
  const float ea = std::exp(da), eb = std::exp(db);
  const int64_t arg = a.m > b.m ? a.arg : b.m > a.m ? b.arg : std::min(a.arg, b.arg);
  a.t = (a.t + da * a.s) * ea + (b.t + db * b.s) * eb;
  a.s = a.s * ea + b.s * eb;
  a.m = m;
  a.arg = arg;
}

// The statistics of logits [lo, hi) of one row (1 / temperature = k), one copy per CPU path.
FLUID_RT_DECLARE_ISA(EntropyPartial, entropy_range,
                     (const void* row, DType dt, int64_t lo, int64_t hi, float k))

}  // namespace fluid_rt
