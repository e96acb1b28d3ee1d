// pack_linear_weight / packed_linear: schemas, argument checks and the CPU impls (tensor -> params).
// CPU-only by design: on CUDA the model's matmuls are cuBLAS's, which needs no packing.
// float32 and bfloat16 (the weight, x, bias and output share one dtype).
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/silu.h>

#include "common.h"
#include "linear/params.h"

namespace fluid_rt {
namespace {

void check_cpu(const at::Tensor& t, const char* name) {
  FLUID_CHECK(t.is_cpu(), name, ": packed linear is a CPU kernel (on CUDA use torch.matmul), got ",
              "a tensor on ", t.device());
}

DType linear_dtype_of(const at::Tensor& t, const char* name) {
  FLUID_CHECK_VALUE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16, name,
                    ": expected float32 or bfloat16, got ", t.scalar_type());
  return t.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
}

// A packed weight: [out_features, in_features], contiguous, in_features even for bfloat16.
void check_packed(const at::Tensor& packed, DType dt) {
  check_rank(packed, 2, "packed");
  check_contiguous(packed, "packed");
  FLUID_CHECK_VALUE(packed.size(0) >= 1 && packed.size(1) >= 1 && (dt == DType::kFloat32 || packed.size(1) % 2 == 0),
                    "packed: expected [out_features, in_features] with both >= 1 (in_features even for ",
                    "bfloat16), got shape ", packed.sizes());
}

at::Tensor pack_linear_weight_impl(const at::Tensor& weight) {
  check_cpu(weight, "weight");
  const DType dt = linear_dtype_of(weight, "weight");
  check_rank(weight, 2, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  FLUID_CHECK_VALUE(N >= 1 && K >= 1, "weight: expected [out_features, in_features] with both >= 1, ",
                    "got shape ", weight.sizes());
  FLUID_CHECK_VALUE(dt == DType::kFloat32 || K % 2 == 0, "weight: bfloat16 packs k in pairs and needs ",
                    "an even in_features, got shape ", weight.sizes());
  // The weight's own shape (csrc/linear/params.h): N * K elements in panel order.
  at::Tensor packed = at::empty({N, K}, weight.options());
  PackLinearParams p;
  p.w = weight.data_ptr();
  p.dtype = dt;
  p.stride_n = weight.stride(0);
  p.stride_k = weight.stride(1);
  p.packed = packed.data_ptr();
  p.K = K;
  p.N = N;
  pack_linear_weight_cpu(p);
  return packed;
}

at::Tensor unpack_linear_weight_impl(const at::Tensor& packed) {
  check_cpu(packed, "packed");
  const DType dt = linear_dtype_of(packed, "packed");
  check_packed(packed, dt);
  const int64_t N = packed.size(0), K = packed.size(1);
  at::Tensor weight = at::empty({N, K}, packed.options());
  PackLinearParams p;
  p.w = weight.data_ptr();
  p.stride_n = K;
  p.stride_k = 1;
  p.packed = packed.data_ptr();
  p.dtype = dt;
  p.K = K;
  p.N = N;
  unpack_linear_weight_cpu(p);
  return weight;
}

// Columns unpacked at a time: one buffer of this many columns, instead of the whole weight.
constexpr int64_t kUnpackColumns = 2048;  // a multiple of the panel width

// y [M, N] for x2 [M, K]: slices of the weight unpacked, transposed ([K, columns], the operand
// layout oneDNN multiplies without repacking it), into one buffer and multiplied by at::mm.
at::Tensor wide_linear(const at::Tensor& x2, const at::Tensor& packed, const std::optional<at::Tensor>& bias,
                       DType dt) {
  const int64_t M = x2.size(0), N = packed.size(0), K = packed.size(1);
  at::Tensor y = at::empty({M, N}, x2.options());
  at::Tensor buf = at::empty({std::min(kUnpackColumns, N) * K}, packed.options());
  const int64_t es = packed.element_size();
  for (int64_t n0 = 0; n0 < N; n0 += kUnpackColumns) {
    const int64_t nc = std::min(kUnpackColumns, N - n0);
    // Columns n0 .. n0 + nc are whole panels starting at element n0 * K: a packed weight of its own.
    const at::Tensor w = buf.narrow(0, 0, K * nc).view({K, nc});
    PackLinearParams q;
    q.w = w.data_ptr();
    q.stride_k = nc;
    q.stride_n = 1;
    q.packed = static_cast<char*>(packed.data_ptr()) + n0 * K * es;
    q.dtype = dt;
    q.K = K;
    q.N = nc;
    unpack_linear_weight_cpu(q);
    y.narrow(1, n0, nc).copy_(bias.has_value() ? at::addmm(bias->narrow(0, n0, nc), x2, w) : at::mm(x2, w));
  }
  return y;
}

at::Tensor packed_linear_impl(const at::Tensor& x, const at::Tensor& packed,
                              const std::optional<at::Tensor>& bias, bool silu_and_mul) {
  check_cpu(x, "x");
  check_cpu(packed, "packed");
  const DType dt = linear_dtype_of(x, "x");
  check_dtype(packed, x.scalar_type(), "packed");
  FLUID_CHECK_VALUE(x.dim() >= 1, "x: expected a tensor of shape [..., in_features], got a 0-d tensor");
  const int64_t x_row_stride = collapsed_row_stride(x, "x");
  check_packed(packed, dt);
  const int64_t out_features = packed.size(0), K = packed.size(1);
  FLUID_CHECK_VALUE(x.size(-1) == (silu_and_mul ? 2 * K : K), "x: the last dim must be ",
                    silu_and_mul ? "2 * in_features = " : "in_features = ", silu_and_mul ? 2 * K : K,
                    " (packed is ", packed.sizes(), "), got shape ", x.sizes());
  PackedLinearParams p;
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    check_cpu(b, "bias");
    check_dtype(b, x.scalar_type(), "bias");
    check_rank(b, 1, "bias");
    check_size(b, 0, out_features, "bias", "out_features");
    check_contiguous(b, "bias");
    p.bias = b.data_ptr();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  const int64_t M = x.numel() / x.size(-1);
  if (dt == DType::kBFloat16 && packed_linear_bf16_uses_onednn(M)) {
    at::Tensor x2 = x.reshape({M, x.size(-1)});
    if (silu_and_mul) x2 = at::mul(at::silu(x2.narrow(1, 0, K)), x2.narrow(1, K, K));  // torch's rounding
    return wide_linear(x2, packed, bias, dt).view(out_shape);
  }
  at::Tensor y = at::empty(out_shape, x.options());
  p.x = x.data_ptr();
  p.x_row_stride = x_row_stride;
  p.packed = packed.data_ptr();
  p.y = y.data_ptr();
  p.dtype = dt;
  p.y_row_stride = out_features;
  p.silu_and_mul = silu_and_mul;
  p.M = M;
  p.K = K;
  p.N = out_features;
  packed_linear_cpu(p);
  return y;
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def("unpack_linear_weight(Tensor packed) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, Tensor? bias=None, bool silu_and_mul=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("pack_linear_weight", &fluid_rt::pack_linear_weight_impl);
  m.impl("unpack_linear_weight", &fluid_rt::unpack_linear_weight_impl);
  m.impl("packed_linear", &fluid_rt::packed_linear_impl);
}
