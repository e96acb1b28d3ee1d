// pack_linear_weight / packed_linear: schemas, argument checks and the CPU impls (tensor -> params).
// CPU-only by design: on CUDA the model's matmuls are cuBLAS's, which needs no packing.
#include <ATen/ops/empty.h>

#include "common.h"
#include "linear/params.h"

namespace fluid_rt {
namespace {

void check_cpu_float32(const at::Tensor& t, const char* name) {
  FLUID_CHECK(t.is_cpu(), name, ": packed linear is a CPU kernel (on CUDA use torch.matmul), got ",
              "a tensor on ", t.device());
  check_dtype(t, at::kFloat, name);
}

at::Tensor pack_linear_weight_impl(const at::Tensor& weight) {
  check_cpu_float32(weight, "weight");
  check_rank(weight, 2, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  FLUID_CHECK_VALUE(N >= 1 && K >= 1, "weight: expected [out_features, in_features] with both >= 1, ",
                    "got shape ", weight.sizes());
  // The weight's own shape (csrc/linear/params.h): N * K floats in panel order.
  at::Tensor packed = at::empty({N, K}, weight.options());
  PackLinearParams p;
  p.w = weight.data_ptr<float>();
  p.stride_n = weight.stride(0);
  p.stride_k = weight.stride(1);
  p.packed = packed.data_ptr<float>();
  p.K = K;
  p.N = N;
  pack_linear_weight_cpu(p);
  return packed;
}

at::Tensor packed_linear_impl(const at::Tensor& x, const at::Tensor& packed,
                              const std::optional<at::Tensor>& bias, bool silu_and_mul) {
  check_cpu_float32(x, "x");
  check_cpu_float32(packed, "packed");
  FLUID_CHECK_VALUE(x.dim() >= 1, "x: expected a tensor of shape [..., in_features], got a 0-d tensor");
  const int64_t x_row_stride = collapsed_row_stride(x, "x");
  check_rank(packed, 2, "packed");
  check_contiguous(packed, "packed");
  const int64_t out_features = packed.size(0), K = packed.size(1);
  FLUID_CHECK_VALUE(out_features >= 1 && K >= 1, "packed: expected [out_features, in_features] with ",
                    "both >= 1, got shape ", packed.sizes());
  FLUID_CHECK_VALUE(x.size(-1) == (silu_and_mul ? 2 * K : K), "x: the last dim must be ",
                    silu_and_mul ? "2 * in_features = " : "in_features = ", silu_and_mul ? 2 * K : K,
                    " (packed is ", packed.sizes(), "), got shape ", x.sizes());
  PackedLinearParams p;
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    check_cpu_float32(b, "bias");
    check_rank(b, 1, "bias");
    check_size(b, 0, out_features, "bias", "out_features");
    check_contiguous(b, "bias");
    p.bias = b.data_ptr<float>();
  }
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  at::Tensor y = at::empty(out_shape, x.options());
  p.x = x.data_ptr<float>();
  p.x_row_stride = x_row_stride;
  p.packed = packed.data_ptr<float>();
  p.y = y.data_ptr<float>();
  p.y_row_stride = out_features;
  p.silu_and_mul = silu_and_mul;
  p.M = x.numel() / x.size(-1);
  p.K = K;
  p.N = out_features;
  packed_linear_cpu(p);
  return y;
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, Tensor? bias=None, bool silu_and_mul=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) {
  m.impl("pack_linear_weight", &fluid_rt::pack_linear_weight_impl);
  m.impl("packed_linear", &fluid_rt::packed_linear_impl);
}
