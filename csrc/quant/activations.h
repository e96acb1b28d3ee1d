// Activation rows quantized for the int8 dot products of the quantized matmul (params.h): per row
// and block of 32, d_x = max|x| / 127, xq = round_half_even(x / d_x), s_x = d_x * sum(xq).
// The kernels broadcast xq's four k of a quad to every column lane straight from these rows.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/dtype.h"
#include "quant/params.h"

namespace fluid_rt {

struct QuantizedRows {
  int8_t* xq = nullptr;      // [M][K]
  float* dx = nullptr;       // [M][nb]
  float* sx = nullptr;       // [M][nb]
  int32_t* sum16 = nullptr;  // [M][2 nb]: sum(xq) over each 16 k (int8 weights offset by 128 need it)
  int64_t nb = 0;
};

// Row m's K inputs as float32: x, or silu(gate) * up (torch's formula, float32 math).
inline void load_input_row(const QuantLinearParams& p, int64_t m, float* out) {
  const int64_t base = m * p.x_row_stride;
  if (!p.silu_and_mul) {
    for (int64_t k = 0; k < p.K; ++k) out[k] = load_as_float(p.x, base + k, p.dtype);
    return;
  }
  for (int64_t k = 0; k < p.K; ++k) {
    const float g = load_as_float(p.x, base + k, p.dtype), u = load_as_float(p.x, base + p.K + k, p.dtype);
    float a = g / (1.f + std::exp(-g));
    // bfloat16 models: torch rounds silu's output and the product to bfloat16, and so do we.
    if (p.dtype == DType::kBFloat16)
      a = bf16_to_float(float_to_bf16(bf16_to_float(float_to_bf16(a)) * u));
    else
      a = a * u;
    out[k] = a;
  }
}

// Quantize one row of K floats (K % 32 == 0) into one row of each QuantizedRows array.
inline void quantize_row(const float* x, int64_t nb, int8_t* xq, float* dx, float* sx, int32_t* sum16) {
  for (int64_t b = 0; b < nb; ++b) {
    const float* v = x + b * kQuantBlock;
    float amax = 0.f;
    for (int i = 0; i < kQuantBlock; ++i) amax = std::fmax(amax, std::fabs(v[i]));
    if (v[0] != v[0]) amax = v[0];  // fmax drops NaNs; keep one so the block's outputs are NaN
    for (int i = 1; i < kQuantBlock; ++i)
      if (v[i] != v[i]) amax = v[i];
    const float d = amax / 127.f;
    const bool finite = std::isfinite(amax) && amax > 0.f;
    const float id = finite ? 127.f / amax : 0.f;
    int32_t half_sums[2] = {0, 0};
    for (int i = 0; i < kQuantBlock; ++i) {
      const float r = std::nearbyint(v[i] * id);
      const int qi = finite ? static_cast<int>(r > 127.f ? 127.f : r < -127.f ? -127.f : r) : 0;
      xq[b * kQuantBlock + i] = static_cast<int8_t>(qi);
      half_sums[i / 16] += qi;
    }
    sum16[2 * b] = half_sums[0], sum16[2 * b + 1] = half_sums[1];
    const int sum = half_sums[0] + half_sums[1];
    // A zero block stays 0 * dot = 0; inf / NaN blocks carry d = inf / NaN into their outputs.
    dx[b] = finite ? d : (amax == 0.f ? 0.f : amax);
    sx[b] = finite ? d * static_cast<float>(sum) : dx[b];
  }
}

}  // namespace fluid_rt
