// Activation rows quantized for the int8 dot products of the quantized matmul (params.h): per row
// and block of 32, d_x = max|x| / 127, xq = round_half_even(x / d_x), s_x = d_x * sum(xq).
// xq is stored "expanded": each chunk of 8 values repeated 4 times (32 bytes), so one vector load
// gives x's eight k in every 8-byte lane, facing four columns' eight k of the weight.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"
#include "quant/params.h"

namespace fluid_rt {

constexpr int64_t kExpandedBlockBytes = 4 * kQuantBlock;  // 128

struct QuantizedRows {
  int8_t* xexp = nullptr;  // [M][nb][128]
  float* dx = nullptr;     // [M][nb]
  float* sx = nullptr;     // [M][nb]
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

// Quantize one row of K floats (K % 32 == 0) into block b's slots of row m.
inline void quantize_row(const float* x, int64_t nb, int8_t* xexp, float* dx, float* sx) {
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
    int8_t q[kQuantBlock];
    int sum = 0;
    for (int i = 0; i < kQuantBlock; ++i) {
      const float r = std::nearbyint(v[i] * id);
      const int qi = finite ? static_cast<int>(r > 127.f ? 127.f : r < -127.f ? -127.f : r) : 0;
      q[i] = static_cast<int8_t>(qi);
      sum += qi;
    }
    int8_t* e = xexp + b * kExpandedBlockBytes;
    for (int c = 0; c < 4; ++c)
      for (int rep = 0; rep < 4; ++rep) std::memcpy(e + 32 * c + 8 * rep, q + 8 * c, 8);
    // A zero block stays 0 * dot = 0; inf / NaN blocks carry d = inf / NaN into their outputs.
    dx[b] = finite ? d : (amax == 0.f ? 0.f : amax);
    sx[b] = finite ? d * static_cast<float>(sum) : dx[b];
  }
}

}  // namespace fluid_rt
