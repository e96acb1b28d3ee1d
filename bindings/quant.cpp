// quant_pack / quant_linear / quant_dequantize_rows: schemas, argument checks and the CPU impls
// (tensor -> params -> csrc/quant). CPU-only: on CUDA quantized files are dequantized at load.
//
// A packed weight is uint8 [groups, K / 32, block_bytes(format)] (csrc/quant/params.h), where
// groups = ceil(out_features / 8); `format` is the QuantFormat number and travels with it.
#include <ATen/ops/empty.h>

#include <optional>
#include <vector>

#include "common.h"
#include "lora.h"
#include "quant.h"
#include "quant/params.h"

namespace fluid_rt {
namespace {

constexpr char kCpuOnly[] =
    "the quantized kernels are CPU kernels (quantized weights are dequantized at load on CUDA)";
constexpr uint32_t kQuantFloat = kOpFloat | kF32 | kBF16;  // one dtype for x, bias and y

// What the tables cannot say depends on the scalars `format` and `out_features` (q's dtype, the
// sizes of packed, d and m): the op's rules below check those.
constexpr ArgSpec kPackArgs[] = {
    {"q", kU8 | kI8, "out_features>=1 in_features>=1", Layout::kContiguous},  // uint8 (u4) or int8 (s8)
    {"d", kF32, "out_features scales", Layout::kContiguous},                  // K / 32 * scales per block
    {"m", kF32, "out_features blocks", Layout::kContiguous, kOptional},       // K / 32: u4 formats only
};
constexpr ArgSpec kDequantizeRowsArgs[] = {
    {"packed", kU8, "groups blocks>=1 block_bytes", Layout::kContiguous},
    {"rows", kI64, "..."},  // any shape and strides: indices are read on the host
};
constexpr ArgSpec kLinearArgs[] = {
    {"x", kQuantFloat, "... features", Layout::kRows},  // features: K, or 2K with silu_and_mul
    {"packed", kU8, "groups blocks>=1 block_bytes", Layout::kContiguous},
    {"bias", kQuantFloat, "out_features", Layout::kContiguous, kOptional},  // size checked against the scalar
};
constexpr OpSpec kPackSpec{kPackArgs, kCpuOnly};
constexpr OpSpec kDequantizeRowsSpec{kDequantizeRowsArgs, kCpuOnly};
constexpr OpSpec kLinearSpec{kLinearArgs, kCpuOnly};

QuantFormat format_of(int64_t format) {
  FLUID_CHECK_VALUE(format >= 0 && format < kNumQuantFormats, "format: expected 0 (u4/f16), 1 (u4/f32), ",
                    "2 (s8/f16) or 3 (s8/f32x2), got ", format);
  return static_cast<QuantFormat>(format);
}

// packed [ceil(N / 8), K / 32, block bytes] (its table checked the rest) for out_features N and
// format f. Returns K.
int64_t packed_in_features(const at::Tensor& packed, QuantFormat f, int64_t out_features) {
  FLUID_CHECK_VALUE(out_features >= 1, "out_features: expected >= 1, got ", out_features);
  const int64_t groups = quant_num_groups(out_features), block_bytes = quant_block_bytes(f);
  FLUID_CHECK_VALUE(packed.size(0) == groups && packed.size(2) == block_bytes, "packed: expected shape [",
                    groups, ", K / 32, ", block_bytes, "] for out_features ", out_features, " and format ",
                    static_cast<int64_t>(f), ", got ", packed.sizes());
  return packed.size(1) * kQuantBlock;
}

// quant_pack's rules that follow from the format: q's dtype, whole blocks of 32, the number of
// scales, and mins for the u4 formats only.
void check_pack_rules(const at::Tensor& q, const at::Tensor& d, const std::optional<at::Tensor>& m,
                      QuantFormat f, int64_t format) {
  FLUID_CHECK_VALUE(q.scalar_type() == (quant_is_u4(f) ? at::kByte : at::kChar), "q: expected ",
                    quant_is_u4(f) ? "uint8 (values 0..15)" : "int8", " for format ", format, ", got ",
                    q.scalar_type());
  const int64_t K = q.size(1);
  FLUID_CHECK_VALUE(K % kQuantBlock == 0, "q: expected [N, K] with N >= 1 and K a positive multiple of 32, ",
                    "got shape ", q.sizes());
  check_size(d, 1, K / kQuantBlock * quant_scales_per_block(f), "d", "K / 32 * scales per block of format");
  FLUID_CHECK_VALUE(m.has_value() == quant_has_min(f), "m: format ", format,
                    quant_has_min(f) ? " needs" : " takes no", " per-block mins");
  if (m.has_value()) check_size(*m, 1, K / kQuantBlock, "m", "K / 32");
}

at::Tensor quant_pack_impl(const at::Tensor& q, const at::Tensor& d, const std::optional<at::Tensor>& m,
                           int64_t format) {
  const QuantFormat f = format_of(format);
  check_args(kPackSpec, {q, d, m});
  check_pack_rules(q, d, m, f, format);
  const int64_t N = q.size(0), K = q.size(1);
  const int64_t nd = d.size(1);
  at::Tensor packed =
      at::empty({quant_num_groups(N), K / kQuantBlock, quant_block_bytes(f)}, q.options().dtype(at::kByte));
  QuantPackParams p;
  p.q = static_cast<const uint8_t*>(q.data_ptr());
  p.d = d.data_ptr<float>();
  p.m = m.has_value() ? m->data_ptr<float>() : nullptr;
  p.packed = packed.data_ptr<uint8_t>();
  p.format = f;
  p.N = N;
  p.K = K;
  const int64_t bad = quant_pack_cpu(p);
  FLUID_CHECK_VALUE(bad < 0, bad < N * nd ? "d" : "m", ": scale #", bad < N * nd ? bad : bad - N * nd,
                    " is not exactly a float16; use a float32-scale format");
  return packed;
}

at::Tensor quant_dequantize_rows_impl(const at::Tensor& packed, int64_t format, int64_t out_features,
                                      const at::Tensor& rows) {
  const QuantFormat f = format_of(format);
  check_args(kDequantizeRowsSpec, {packed, rows});
  const int64_t K = packed_in_features(packed, f, out_features);
  const at::Tensor r = rows.contiguous();
  const int64_t* idx = r.data_ptr<int64_t>();
  for (int64_t i = 0; i < r.numel(); ++i)  // CPU-only op: the indices are host values
    FLUID_CHECK_VALUE(idx[i] >= 0 && idx[i] < out_features, "rows: entry ", i, " is ", idx[i],
                      ", outside [0, ", out_features, ")");
  std::vector<int64_t> shape(rows.sizes().begin(), rows.sizes().end());
  shape.push_back(K);
  at::Tensor out = at::empty(shape, packed.options().dtype(at::kFloat));
  QuantDequantParams p;
  p.packed = packed.data_ptr<uint8_t>();
  p.format = f;
  p.N = out_features;
  p.K = K;
  p.rows = idx;
  p.n = r.numel();
  p.out = out.data_ptr();
  quant_dequantize_rows_cpu(p);
  return out;
}

}  // namespace

at::Tensor quant_linear_output(const at::Tensor& x, const at::Tensor& packed, QuantFormat f, int64_t K,
                               int64_t out_features, const std::optional<at::Tensor>& bias, bool silu_and_mul,
                               QuantLinearParams& p) {
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor y = at::empty(out_shape, x.options());
  p.x = x.data_ptr();
  p.x_row_stride = row_stride(x);
  p.silu_and_mul = silu_and_mul;
  p.dtype = x.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  p.packed = packed.data_ptr<uint8_t>();
  p.format = f;
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
  p.y = y.data_ptr();
  p.y_row_stride = out_features;
  p.M = x.numel() / x.size(-1);
  p.K = K;
  p.N = out_features;
  return y;
}

namespace {

at::Tensor quant_linear_impl(const at::Tensor& x, const at::Tensor& packed, int64_t format,
                             int64_t out_features, const std::optional<at::Tensor>& bias, bool silu_and_mul,
                             const std::optional<at::Tensor>& lora_rows,
                             const std::optional<at::Tensor>& lora_a_t,
                             const std::optional<at::Tensor>& lora_b, at::IntArrayRef lora_out_parts) {
  const QuantFormat f = format_of(format);
  check_args(kLinearSpec, {x, packed, bias});
  const int64_t K = packed_in_features(packed, f, out_features);
  check_linear_input(x, K, silu_and_mul, "packed", packed);
  if (bias.has_value()) check_size(*bias, 0, out_features, "bias", "out_features");
  QuantLinearParams p;
  at::Tensor y = quant_linear_output(x, packed, f, K, out_features, bias, silu_and_mul, p);
  // The gated adapter's LoRA delta at lora_rows, gated_lora_ on this call's x and y: a decode step
  // then makes one op call per adapted linear, not two. Checked before any work is done.
  const bool lora = lora_rows.has_value() || lora_a_t.has_value() || lora_b.has_value();
  FLUID_CHECK_VALUE(!lora || (lora_rows.has_value() && lora_a_t.has_value() && lora_b.has_value()),
                    "lora_rows, lora_a_t, lora_b: give all three or none");
  FLUID_CHECK_VALUE(lora || lora_out_parts.empty(), "lora_out_parts without lora_rows, lora_a_t, lora_b");
  // (Errors in them name gated_lora_'s arguments: rows, a_t, b_t, out_parts.)
  std::vector<int64_t> ends;
  const GatedLoraParams lp =
      lora ? describe_gated_lora(y, x, *lora_rows, *lora_a_t, *lora_b, silu_and_mul, lora_out_parts, ends)
           : GatedLoraParams{};
  quant_linear_cpu(p);
  if (lora) gated_lora_cpu(lp);
  return y;
}

}  // namespace

}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("quant_pack(Tensor q, Tensor d, Tensor? m, int format) -> Tensor");
  m.def("quant_dequantize_rows(Tensor packed, int format, int out_features, Tensor rows) -> Tensor");
  m.def(
      "quant_linear(Tensor x, Tensor packed, int format, int out_features, Tensor? bias=None, "
      "bool silu_and_mul=False, Tensor? lora_rows=None, Tensor? lora_a_t=None, Tensor? lora_b=None, "
      "int[] lora_out_parts=[]) -> Tensor");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("quant_pack", &fluid_rt::quant_pack_impl);
  m.impl("quant_dequantize_rows", &fluid_rt::quant_dequantize_rows_impl);
  m.impl("quant_linear", &fluid_rt::quant_linear_impl);
}
