// CPU rope: one pass over each row's heads; rows split over OpenMP threads when there are many
// (prefill). Float math per element with the rounding of the dtype after every operation, so the
// result is HF's bit for bit in float32 and bfloat16.
#include "rope/params.h"

#include <vector>

namespace fluid_rt {
namespace {

inline float round_to(float v, DType t) {
  return t == DType::kFloat32 ? v : t == DType::kBFloat16 ? bf16_to_float(float_to_bf16(v))
                                                          : fp16_to_float(float_to_fp16(v));
}

void rope_row(const RopeParams& p, int64_t r, float* tmp) {
  const int64_t D = p.head_dim, half = D / 2;
  for (int64_t h = 0; h < p.heads; ++h) {
    const int64_t base = r * p.row_stride + h * D;
    for (int64_t d = 0; d < D; ++d) tmp[d] = load_as_float(p.x, base + d, p.dtype);
    for (int64_t d = 0; d < D; ++d) {
      const float c = load_as_float(p.cos, r * D + d, p.dtype), s = load_as_float(p.sin, r * D + d, p.dtype);
      const float swapped = tmp[d < half ? d + half : d - half];
      const float a = round_to(tmp[d] * c, p.dtype), b = round_to(swapped * s, p.dtype);
      store_from_float(p.x, base + d, p.dtype, a + b);
    }
  }
}

// float32: no rounding step and no per-element dtype switch, so the compiler vectorizes the two
// half-rows (same math: a multiply, a multiply, an add, each rounded; no contraction here).
void rope_row_f32(const RopeParams& p, int64_t r, float* tmp) {
  const int64_t D = p.head_dim, half = D / 2;
  const float* __restrict__ c = static_cast<const float*>(p.cos) + r * D;
  const float* __restrict__ s = static_cast<const float*>(p.sin) + r * D;
  for (int64_t h = 0; h < p.heads; ++h) {
    float* __restrict__ x = static_cast<float*>(p.x) + r * p.row_stride + h * D;
    for (int64_t d = 0; d < D; ++d) tmp[d] = x[d];
    for (int64_t d = 0; d < half; ++d) x[d] = tmp[d] * c[d] + tmp[d + half] * s[d];
    for (int64_t d = half; d < D; ++d) x[d] = tmp[d] * c[d] + tmp[d - half] * s[d];
  }
}

}  // namespace

void rope_cpu(const RopeParams& p) {
  const bool parallel = p.rows > 1 && p.rows * p.heads * p.head_dim >= (1 << 16);
#pragma omp parallel if (parallel)
  {
    std::vector<float> tmp(p.head_dim);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < p.rows; ++r) {
      if (p.dtype == DType::kFloat32) rope_row_f32(p, r, tmp.data());
      else rope_row(p, r, tmp.data());
    }
  }
}

}  // namespace fluid_rt
