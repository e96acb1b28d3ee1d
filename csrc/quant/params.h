// Quantized weights (GGUF Q8_0 / Q4_0 / Q4_1 / Q4_K / Q6_K) kept in 4-8 bits and multiplied
// without dequantizing them to floats: y[M, N] = x[M, K] @ W[N, K]^T (+ bias).
//
// Why: decoding streams every weight once per forward, so its speed is the weight's size. A
// dequantized float32 copy is 5-8x the bytes of the file; these kernels read the file's bits.
//
// Weight formats (what the GGUF types are repacked into at load; the repacking is lossless):
//   kU4F16   4-bit q in [0, 15], value = d * q + m, d and m float16 per block of 32   (Q4_0, Q4_1)
//   kU4F32   the same with float32 d and m (Q4_K: d * sub_scale is not a float16)
//   kS8F16   int8 q, value = d * q, d float16 per block of 32                         (Q8_0)
//   kS8F32x2 int8 q, value = d * q, float32 d per 16 values (two per block)          (Q6_K)
//
// Layout: output columns in groups of 8 (the last group zero-padded), K in blocks of 32. The
// packed buffer is [groups][K / 32][block bytes]: each (group, block) holds the quants of its 8
// columns, then their scales, so a column group is one sequential stream. The quants of a block
// are eight "quad vectors" t = 0..7 of 32 bytes: byte 4 j + i of quad t is q(column j, k = 4 t + i).
// One 32-bit lane per column: a quad vector against x's four k broadcast to every lane gives each
// column's partial dot product in its own lane (one maddubs + madd, or one dpbusd), so a block
// needs no horizontal sums and its float work is a few instructions per row for all 8 columns.
//   int8:  the 8 quad vectors in order (256 bytes).
//   uint4: 128 bytes; byte 32 c + t holds quad c's byte t in its low and quad c + 4's byte t in its
//          high nibble (c = 0..3), so one 32-byte load and two mask/shift ops give two quads.
// Scales follow in column order: float16 d[8] then m[8], float32 d[8] then m[8], or float32
// d_lo[8] (k 0..15), d_hi[8] (k 16..31).
//
// Activations are quantized per row and per block of 32 (q8, like llama.cpp's Q8_1):
// d_x = max|x| / 127, xq = round_half_even(x / d_x), s_x = d_x * sum(xq); a block's contribution
// to column n is (d_w d_x) * dot(q_w, xq) (+ m_w * s_x), summed over blocks in float32 in k order.
// A row's output depends on that row only, bit for bit: threads split columns, never rows, and
// every row runs the same instructions whatever the number of rows in the call.
#pragma once
#include <cstdint>

#include "common/dtype.h"
#include "common/prefetch.h"

namespace fluid_rt {

enum class QuantFormat : int { kU4F16 = 0, kU4F32 = 1, kS8F16 = 2, kS8F32x2 = 3 };
constexpr int kNumQuantFormats = 4;

constexpr int64_t kQuantBlock = 32;  // k per block
constexpr int64_t kQuantGroup = 8;   // output columns per group

constexpr bool quant_is_u4(QuantFormat f) { return f == QuantFormat::kU4F16 || f == QuantFormat::kU4F32; }
constexpr bool quant_has_min(QuantFormat f) { return quant_is_u4(f); }
constexpr int64_t quant_quant_bytes(QuantFormat f) { return quant_is_u4(f) ? 128 : 256; }
constexpr int64_t quant_scale_bytes(QuantFormat f) {
  switch (f) {
    case QuantFormat::kU4F16: return 32;
    case QuantFormat::kU4F32: return 64;
    case QuantFormat::kS8F16: return 16;
    default: return 64;
  }
}
// Bytes of one (group, block).
constexpr int64_t quant_block_bytes(QuantFormat f) { return quant_quant_bytes(f) + quant_scale_bytes(f); }

// Scales per block and column: 2 for kS8F32x2 (one per 16 k), else 1.
constexpr int64_t quant_scales_per_block(QuantFormat f) { return f == QuantFormat::kS8F32x2 ? 2 : 1; }
constexpr int64_t quant_num_groups(int64_t n) { return (n + kQuantGroup - 1) / kQuantGroup; }

// The kernels prefetch the weight stream 8 KiB ahead of the block they read: a decode step finds
// every weight outside the core's caches, and the hardware streamer stops at each 4 KiB page, so
// without it the loads and the integer dots took turns. Embedded SmolLM2 forward (paired A/B, Xeon,
// 2 threads): 1 row 11.8 -> 11.1 ms (avx2) and 11.2 -> 9.9 (avx512), 5 rows 22.4 -> 20.0 and
// 18.0 -> 15.3; 2 and 4 KiB ahead gained less on avx512, an L2 hint the same.
constexpr int64_t kQuantPrefetchBytes = 8192;

template <QuantFormat F>
inline void prefetch_quant_block(const uint8_t* block) {
  prefetch_span(block + kQuantPrefetchBytes, quant_block_bytes(F));
}

// Packing: integer quants and float scales (rows = output columns) -> the layout above.
struct QuantPackParams {
  const uint8_t* q = nullptr;  // [N, K]: uint4 values 0..15 (U4) or int8 bit patterns (S8)
  const float* d = nullptr;    // [N, K / 32 * scales_per_block]
  const float* m = nullptr;    // [N, K / 32] (U4 formats) or null
  uint8_t* packed = nullptr;   // groups * K / 32 * block bytes
  QuantFormat format = QuantFormat::kU4F16;
  int64_t N = 0, K = 0;  // K % 32 == 0
};

// Returns -1, or the flat index into d (m: d's size + index) of the first scale that float16
// formats cannot hold exactly (nothing is written then).
int64_t quant_pack_cpu(const QuantPackParams& p);

// Rows of W (output columns `rows[i]`) back as floats: out[i, k] = d * q (+ m), float32 math.
struct QuantDequantParams {
  const uint8_t* packed = nullptr;
  QuantFormat format = QuantFormat::kU4F16;
  int64_t N = 0, K = 0;
  const int64_t* rows = nullptr;  // [n], each in [0, N)
  int64_t n = 0;
  void* out = nullptr;  // [n, K]
  DType out_dtype = DType::kFloat32;
};

void quant_dequantize_rows_cpu(const QuantDequantParams& p);

struct QuantLinearParams {
  const void* x = nullptr;  // [M, K] (or [M, 2K] = [gate, up] with silu_and_mul), rows at x_row_stride
  int64_t x_row_stride = 0;
  bool silu_and_mul = false;      // rows multiplied are silu(gate) * up, float32 math
  DType dtype = DType::kFloat32;  // of x, bias and y: float32 or bfloat16
  const uint8_t* packed = nullptr;
  QuantFormat format = QuantFormat::kU4F16;
  const void* bias = nullptr;  // [N] or null
  void* y = nullptr;           // [M, N], rows at y_row_stride
  int64_t y_row_stride = 0;
  int64_t M = 0, K = 0, N = 0;
};

void quant_linear_cpu(const QuantLinearParams& p);

}  // namespace fluid_rt
