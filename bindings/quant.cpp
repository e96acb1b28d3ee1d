// quant_pack / quant_linear / quant_dequantize_rows: schemas, argument checks and the CPU impls
// (tensor -> params -> csrc/quant). CPU-only: on CUDA quantized files are dequantized at load.
//
// A packed weight is uint8 [groups, K / 32, block_bytes(format)] (csrc/quant/params.h), where
// groups = ceil(out_features / 8); `format` is the QuantFormat number and travels with it.
#include <ATen/ops/empty.h>

#include "common.h"
#include "quant/params.h"

namespace fluid_rt {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  FLUID_CHECK(t.is_cpu(), name, ": the quantized kernels are CPU kernels (quantized weights are ",
              "dequantized at load on CUDA), got a tensor on ", t.device());
}

QuantFormat format_of(int64_t format) {
  FLUID_CHECK_VALUE(format >= 0 && format < kNumQuantFormats, "format: expected 0 (u4/f16), 1 (u4/f32), ",
                    "2 (s8/f16) or 3 (s8/f32x2), got ", format);
  return static_cast<QuantFormat>(format);
}

// packed: uint8 [ceil(N / 8), K / 32, block bytes], contiguous. Returns K.
int64_t check_packed(const at::Tensor& packed, QuantFormat f, int64_t out_features) {
  check_cpu(packed, "packed");
  check_dtype(packed, at::kByte, "packed");
  check_rank(packed, 3, "packed");
  check_contiguous(packed, "packed");
  FLUID_CHECK_VALUE(out_features >= 1, "out_features: expected >= 1, got ", out_features);
  FLUID_CHECK_VALUE(packed.size(0) == quant_num_groups(out_features) && packed.size(1) >= 1 &&
                        packed.size(2) == quant_block_bytes(f),
                    "packed: expected shape [", quant_num_groups(out_features), ", K / 32, ",
                    quant_block_bytes(f), "] for out_features ", out_features, " and format ",
                    static_cast<int64_t>(f), ", got ", packed.sizes());
  return packed.size(1) * kQuantBlock;
}

at::Tensor quant_pack_impl(const at::Tensor& q, const at::Tensor& d, const std::optional<at::Tensor>& m,
                           int64_t format) {
  const QuantFormat f = format_of(format);
  check_cpu(q, "q");
  check_cpu(d, "d");
  FLUID_CHECK_VALUE(q.scalar_type() == (quant_is_u4(f) ? at::kByte : at::kChar), "q: expected ",
                    quant_is_u4(f) ? "uint8 (values 0..15)" : "int8", " for format ", format, ", got ",
                    q.scalar_type());
  check_rank(q, 2, "q");
  check_contiguous(q, "q");
  const int64_t N = q.size(0), K = q.size(1);
  FLUID_CHECK_VALUE(N >= 1 && K >= kQuantBlock && K % kQuantBlock == 0, "q: expected [N, K] with N >= 1 and K ",
                    "a positive multiple of 32, got shape ", q.sizes());
  const int64_t nd = K / kQuantBlock * quant_scales_per_block(f);
  check_dtype(d, at::kFloat, "d");
  check_contiguous(d, "d");
  FLUID_CHECK_VALUE(d.dim() == 2 && d.size(0) == N && d.size(1) == nd, "d: expected shape [", N, ", ", nd,
                    "], got ", d.sizes());
  FLUID_CHECK_VALUE(m.has_value() == quant_has_min(f), "m: format ", format,
                    quant_has_min(f) ? " needs" : " takes no", " per-block mins");
  if (m.has_value()) {
    check_cpu(*m, "m");
    check_dtype(*m, at::kFloat, "m");
    check_contiguous(*m, "m");
    FLUID_CHECK_VALUE(m->dim() == 2 && m->size(0) == N && m->size(1) == K / kQuantBlock, "m: expected shape [",
                      N, ", ", K / kQuantBlock, "], got ", m->sizes());
  }
  at::Tensor packed = at::empty({quant_num_groups(N), K / kQuantBlock, quant_block_bytes(f)}, q.options().dtype(at::kByte));
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
  const int64_t K = check_packed(packed, f, out_features);
  check_cpu(rows, "rows");
  check_dtype(rows, at::kLong, "rows");
  const at::Tensor r = rows.contiguous();
  const int64_t* idx = r.data_ptr<int64_t>();
  for (int64_t i = 0; i < r.numel(); ++i)
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

at::Tensor quant_linear_impl(const at::Tensor& x, const at::Tensor& packed, int64_t format, int64_t out_features,
                             const std::optional<at::Tensor>& bias, bool silu_and_mul) {
  const QuantFormat f = format_of(format);
  const int64_t K = check_packed(packed, f, out_features);
  check_cpu(x, "x");
  FLUID_CHECK_VALUE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                    "x: expected float32 or bfloat16, got ", x.scalar_type());
  FLUID_CHECK_VALUE(x.dim() >= 1, "x: expected a tensor of shape [..., in_features], got a 0-d tensor");
  const int64_t x_row_stride = collapsed_row_stride(x, "x");
  FLUID_CHECK_VALUE(x.size(-1) == (silu_and_mul ? 2 * K : K), "x: the last dim must be ",
                    silu_and_mul ? "2 * in_features = " : "in_features = ", silu_and_mul ? 2 * K : K,
                    " (packed is ", packed.sizes(), "), got shape ", x.sizes());
  QuantLinearParams p;
  if (bias.has_value()) {
    check_cpu(*bias, "bias");
    check_dtype(*bias, x.scalar_type(), "bias");
    check_rank(*bias, 1, "bias");
    check_size(*bias, 0, out_features, "bias", "out_features");
    check_contiguous(*bias, "bias");
    p.bias = bias->data_ptr();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor y = at::empty(out_shape, x.options());
  p.x = x.data_ptr();
  p.x_row_stride = x_row_stride;
  p.silu_and_mul = silu_and_mul;
  p.dtype = x.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
  p.packed = packed.data_ptr<uint8_t>();
  p.format = f;
  p.y = y.data_ptr();
  p.y_row_stride = out_features;
  p.M = x.numel() / x.size(-1);
  p.K = K;
  p.N = out_features;
  quant_linear_cpu(p);
  return y;
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("quant_pack(Tensor q, Tensor d, Tensor? m, int format) -> Tensor");
  m.def("quant_dequantize_rows(Tensor packed, int format, int out_features, Tensor rows) -> Tensor");
  m.def("quant_linear(Tensor x, Tensor packed, int format, int out_features, Tensor? bias=None, "
        "bool silu_and_mul=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("quant_pack", &fluid_rt::quant_pack_impl);
  m.impl("quant_dequantize_rows", &fluid_rt::quant_dequantize_rows_impl);
  m.impl("quant_linear", &fluid_rt::quant_linear_impl);
}
