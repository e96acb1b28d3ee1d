// FLUID's K-head on the CPU: Linear(H, H4) -> GELU (exact, erf) -> Linear(H4, max_k), float32, one
// hidden state at a time. fluid_rt.khead.KHead uses it on the CPU (ops.khead_logits) and the CPU
// decode step calls it directly, so both pick the same K bit for bit.
#pragma once
#include <cstdint>

namespace fluid_rt {

struct KHeadWeights {
  const float* w1_t = nullptr;  // [H, H4] (the first Linear's weight, transposed)
  const float* b1 = nullptr;    // [H4]
  const float* w2_t = nullptr;  // [H4, max_k]
  const float* b2 = nullptr;    // [max_k]
  int64_t hidden = 0, inner = 0, max_k = 0;
};

constexpr int64_t kKHeadMaxInner = 4096;  // H4 bound of khead_logits' stack buffer
constexpr int64_t kKHeadMaxK = 64;

// out[max_k] = the K-head's logits for one hidden state h[H] (csrc/step/cpu.cpp: one compiled
// definition, so the op and the decode step round alike).
void khead_logits(const KHeadWeights& w, const float* h, float* out);

}  // namespace fluid_rt
