// packed_linear: y[M, N] = x[M, K] @ W[K, N] (+ bias[N]), float32 or bfloat16, with W packed once
// at load.
//
// Why: decoding multiplies a handful of rows (1 token for AR, ~4..33 for an elastic block) by every
// weight of the model once per forward. That is a weight stream, bound by memory bandwidth, and a
// BLAS GEMM spends most of its time at these M re-packing the weight on every call. Packing it
// once, in the order the micro-kernel reads it, turns each forward into one sequential pass over
// the weights with all M rows computed per loaded vector.
//
// Packed layout: column panels of 32 columns. Panel p holds columns [32 p, 32 p + w) (w = 32, or
// what is left for the last panel), starting at element 32 p K, as K "steps" of w columns:
//   float32:  [K][w]        (step = one k)
//   bfloat16: [K / 2][w][2] (step = a pair of k, interleaved per column: the operand layout of
//                            AVX512-BF16's vdpbf16ps, which multiplies bf16 pairs into float32)
// A step of a full panel is 128 bytes in both. The buffer has exactly N * K elements, so the
// packed tensor keeps the weight's shape [N, K] and every size check stays exact (as oneDNN's
// packed weights do). bfloat16 needs an even K.
//
// Math: float32 accumulation in k order; bfloat16 outputs rounded once (to nearest even) after
// the bias is added in float32.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace fluid_rt {

constexpr int64_t kLinearPanel = 32;

inline int64_t linear_num_panels(int64_t n) { return (n + kLinearPanel - 1) / kLinearPanel; }

// Width of panel `panel` of an N-column weight: 32, or the remainder for the last one.
inline int64_t linear_panel_width(int64_t n, int64_t panel) {
  return n - panel * kLinearPanel < kLinearPanel ? n - panel * kLinearPanel : kLinearPanel;
}

struct PackLinearParams {
  const void* w = nullptr;  // W[k, n] at w[k * stride_k + n * stride_n] (any 2-D strides)
  int64_t stride_k = 0, stride_n = 0;
  void* packed = nullptr;         // N * K elements
  DType dtype = DType::kFloat32;  // float32 or bfloat16 (w and packed alike)
  int64_t K = 0, N = 0;
};

struct PackedLinearParams {
  const void* x = nullptr;  // [M, K], row m at x + m * x_row_stride, columns contiguous
  int64_t x_row_stride = 0;
  // SwiGLU's input: x is [M, 2K] = [gate, up] and the rows multiplied are silu(gate) * up
  // (float32 math, torch's order: silu(g) = g / (1 + exp(-g)), then the product; for bfloat16 each
  // of the two is rounded to bfloat16, as torch's bfloat16 ops do).
  bool silu_and_mul = false;
  const void* packed = nullptr;  // from pack_linear_weight_cpu, same dtype
  const void* bias = nullptr;    // [N] or null
  void* y = nullptr;             // [M, N], row m at y + m * y_row_stride
  int64_t y_row_stride = 0;
  DType dtype = DType::kFloat32;  // of x, packed, bias and y: float32 or bfloat16
  int64_t M = 0, K = 0, N = 0;    // K, N >= 1; K even for bfloat16
};

void pack_linear_weight_cpu(const PackLinearParams& p);
// The inverse: packed -> W[k, n] at w[k * stride_k + n * stride_n] (p.w is written).
void unpack_linear_weight_cpu(const PackLinearParams& p);
void packed_linear_cpu(const PackedLinearParams& p);

}  // namespace fluid_rt
