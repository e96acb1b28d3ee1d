// Vector exponentials for the *.isa.cpp kernels, on csrc/common/vec.h's VecF: 2^x and e^x for
// non-positive arguments (softmax and entropy only ever take exp of x - max), and silu.
//
// Both round n = round(x) with one add: t = x + kPow2Magic is a float in [2^23, 2^24), whose low
// mantissa bits then hold n + 127 (round to nearest even, like the FPU), so t - kPow2Magic is n and
// exponent_bits(t) is 2^n, built in the exponent field with no float->int conversion. That needs
// n + 127 >= 0: arguments are clamped by the caller; n = -127 gives exactly 0 (the zero exponent
// field, mantissa 0), which is how a masked or -inf logit weighs exactly nothing.
#pragma once

#include "common/vec.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {

constexpr float kPow2Magic = 12582912.0f + 127.0f;  // 1.5 * 2^23, plus the exponent bias

// 2^x for x in [-127.5, 0]: x = n + f with |f| <= 1/2, 2^f by its degree-7 Taylor series in
// f * ln2 (relative error ~5e-9, below float rounding), times 2^n.
inline VecF exp2_nonpositive(VecF x) {
  const VecF t = x + vset1(kPow2Magic);
  const VecF f = x - (t - vset1(kPow2Magic));
  VecF p = vset1(1.525273380405984e-05f);
  p = fma(p, f, vset1(1.5403530393381608e-04f));
  p = fma(p, f, vset1(1.3333558146428443e-03f));
  p = fma(p, f, vset1(9.618129107628477e-03f));
  p = fma(p, f, vset1(5.550410866482158e-02f));
  p = fma(p, f, vset1(2.402265069591007e-01f));
  p = fma(p, f, vset1(6.931471805599453e-01f));
  p = fma(p, f, vset1(1.f));
  return p * exponent_bits(t);
}

// Arguments of exp_nonpositive below this give exactly 0 (n = -127); e^-88 < 2^-126 already.
constexpr float kExpFlushBelow = -88.0f;

// e^d for d in [kExpFlushBelow, 0]. d = n ln2 + r, |r| <= ln2/2, with ln2 split in two (Cody-Waite)
// so that n ln2 is exact; e^r by its degree-7 Taylor polynomial (truncation < 6e-9 relative, below
// half an ulp) in Horner form, times 2^n. ~1 ulp. Results below 2^-126 are flushed to 0, which
// changes no sum they enter (every softmax sum holds an e^0 = 1).
inline VecF exp_nonpositive(VecF d) {
  const VecF t = fma(d, vset1(1.44269504088896341f), vset1(kPow2Magic));
  const VecF n = t - vset1(kPow2Magic);
  VecF r = fnma(n, vset1(0.693145751953125f), d);
  r = fnma(n, vset1(1.428606765330187e-6f), r);
  VecF p = vset1(1.0f / 5040.0f);
  p = fma(p, r, vset1(1.0f / 720.0f));
  p = fma(p, r, vset1(1.0f / 120.0f));
  p = fma(p, r, vset1(1.0f / 24.0f));
  p = fma(p, r, vset1(1.0f / 6.0f));
  p = fma(p, r, vset1(0.5f));
  p = fma(p, r, vset1(1.0f));
  p = fma(p, r, vset1(1.0f));
  return p * exponent_bits(t);
}

// silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) (never overflows): SwiGLU's gate.
inline VecF silu(VecF g) {
  const MaskF pos = g > vzero();
  const VecF e = exp_nonpositive(vmax(select(pos, vzero() - g, g), vset1(kExpFlushBelow)));
  const VecF one = vset1(1.0f);
  return g * select(pos, one / (one + e), e / (one + e));
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
