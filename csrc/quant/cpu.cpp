// Quantized weights on the CPU: packing into the kernel layout (params.h), dequantizing rows (the
// embedding lookup), and the per-path matmul kernels of kernel.isa.cpp.
#include <algorithm>
#include <cstring>

#include "common/isa.h"
#include "quant/params.h"

namespace fluid_rt {

FLUID_RT_DECLARE_ISA(void, quant_linear_run, (const QuantLinearParams& p))

namespace {

bool fp16_exact(float v) { return fp16_to_float(float_to_fp16(v)) == v; }

// -1, or the index (into d, then m) of the first scale a float16 format cannot hold.
int64_t first_inexact_scale(const QuantPackParams& p) {
  if (p.format != QuantFormat::kU4F16 && p.format != QuantFormat::kS8F16) return -1;
  const int64_t nd = p.N * (p.K / kQuantBlock);
  for (int64_t i = 0; i < nd; ++i)
    if (!fp16_exact(p.d[i])) return i;
  if (p.m != nullptr)
    for (int64_t i = 0; i < nd; ++i)
      if (!fp16_exact(p.m[i])) return nd + i;
  return -1;
}

// Byte offset of value (column j, k) inside a block's quants, and whether it is the high nibble.
inline int64_t quant_offset(QuantFormat f, int j, int k, bool* high) {
  const int t = k / 4, i = k % 4;  // quad t, its i-th k
  *high = quant_is_u4(f) && t >= 4;
  return 32 * (quant_is_u4(f) ? t % 4 : t) + 4 * j + i;
}

void write_scales(const QuantPackParams& p, int64_t g, int64_t b, uint8_t* s) {
  const int64_t nb = p.K / kQuantBlock, spb = quant_scales_per_block(p.format);
  const bool f16 = p.format == QuantFormat::kU4F16 || p.format == QuantFormat::kS8F16;
  for (int64_t h = 0; h < spb; ++h)
    for (int j = 0; j < 8; ++j) {
      const int64_t n = g * kQuantGroup + j;
      const float d = n < p.N ? p.d[(n * nb + b) * spb + h] : 0.f;
      const float m = n < p.N && p.m ? p.m[n * nb + b] : 0.f;
      if (f16) {
        const uint16_t dh = float_to_fp16(d), mh = float_to_fp16(m);
        std::memcpy(s + 2 * j, &dh, 2);
        if (quant_has_min(p.format)) std::memcpy(s + 16 + 2 * j, &mh, 2);
      } else {
        std::memcpy(s + 32 * h + 4 * j, &d, 4);
        if (quant_has_min(p.format)) std::memcpy(s + 32 + 4 * j, &m, 4);
      }
    }
}

}  // namespace

int64_t quant_pack_cpu(const QuantPackParams& p) {
  const int64_t bad = first_inexact_scale(p);
  if (bad >= 0) return bad;
  const int64_t nb = p.K / kQuantBlock, groups = quant_num_groups(p.N), bb = quant_block_bytes(p.format);
  const QuantFormat f = p.format;
#pragma omp parallel for schedule(static)
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t b = 0; b < nb; ++b) {
      uint8_t* blk = p.packed + (g * nb + b) * bb;
      std::memset(blk, 0, bb);
      for (int j = 0; j < kQuantGroup; ++j) {
        const int64_t n = g * kQuantGroup + j;
        if (n >= p.N) break;
        for (int k = 0; k < kQuantBlock; ++k) {
          bool high;
          const int64_t off = quant_offset(f, j, k, &high);
          const uint8_t q = p.q[n * p.K + b * kQuantBlock + k];
          blk[off] |= quant_is_u4(f) ? static_cast<uint8_t>((q & 0xF) << (high ? 4 : 0)) : q;
        }
      }
      write_scales(p, g, b, blk + quant_quant_bytes(f));
    }
  }
  return -1;
}

void quant_dequantize_rows_cpu(const QuantDequantParams& p) {
  const QuantFormat f = p.format;
  const int64_t nb = p.K / kQuantBlock, bb = quant_block_bytes(f), spb = quant_scales_per_block(f);
  const bool f16 = f == QuantFormat::kU4F16 || f == QuantFormat::kS8F16;
#pragma omp parallel for schedule(static) if (p.n * p.K >= (1 << 16))
  for (int64_t i = 0; i < p.n; ++i) {
    const int64_t n = p.rows[i], g = n / kQuantGroup;
    const int j = static_cast<int>(n % kQuantGroup);
    for (int64_t b = 0; b < nb; ++b) {
      const uint8_t* blk = p.packed + (g * nb + b) * bb;
      const uint8_t* s = blk + quant_quant_bytes(f);
      for (int k = 0; k < kQuantBlock; ++k) {
        const int64_t h = spb == 2 ? k / 16 : 0;
        float d, m = 0.f;
        if (f16) {
          uint16_t dh, mh;
          std::memcpy(&dh, s + 2 * j, 2);
          d = fp16_to_float(dh);
          if (quant_has_min(f)) std::memcpy(&mh, s + 16 + 2 * j, 2), m = fp16_to_float(mh);
        } else {
          std::memcpy(&d, s + 32 * h + 4 * j, 4);
          if (quant_has_min(f)) std::memcpy(&m, s + 32 + 4 * j, 4);
        }
        bool high;
        const uint8_t byte = blk[quant_offset(f, j, k, &high)];
        const float q = quant_is_u4(f) ? static_cast<float>(high ? byte >> 4 : byte & 0xF)
                                       : static_cast<float>(static_cast<int8_t>(byte));
        const float prod = d * q;  // rounded before the add, as gguf's numpy dequantization
        store_from_float(p.out, i * p.K + b * kQuantBlock + k, p.out_dtype, prod + m);
      }
    }
  }
}

void quant_linear_cpu(const QuantLinearParams& p) { FLUID_RT_ISA_PICK(quant_linear_run)(p); }

}  // namespace fluid_rt
