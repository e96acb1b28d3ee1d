// pack_linear_weight / packed_linear / unpack_linear_weight: schemas, argument checks and the CPU
// impls (tensor -> params).
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

constexpr uint32_t kLinearFloat = kOpFloat | kF32 | kBF16;  // one dtype for weight, x, bias and y
constexpr char kCpuOnly[] = "packed linear is a CPU kernel (on CUDA use torch.matmul)";

constexpr ArgSpec kPackArgs[] = {
    {"weight", kLinearFloat, "out_features>=1 in_features>=1"},  // any strides
};
constexpr ArgSpec kUnpackArgs[] = {
    {"packed", kLinearFloat, "out_features>=1 in_features>=1", Layout::kContiguous},
};
constexpr ArgSpec kPackedLinearArgs[] = {
    {"x", kLinearFloat, "... features", Layout::kRows},  // features: in_features, or 2x with silu_and_mul
    {"packed", kLinearFloat, "out_features>=1 in_features>=1", Layout::kContiguous},
    {"bias", kLinearFloat, "out_features", Layout::kContiguous, kOptional},
};
constexpr OpSpec kPackSpec{kPackArgs, kCpuOnly};
constexpr OpSpec kUnpackSpec{kUnpackArgs, kCpuOnly};
constexpr OpSpec kPackedLinearSpec{kPackedLinearArgs, kCpuOnly};

DType linear_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat ? DType::kFloat32 : DType::kBFloat16;
}

// bfloat16 weights are packed in k pairs (the operand of vdpbf16ps).
void check_even_in_features(const at::Tensor& weight, const char* name) {
  FLUID_CHECK_VALUE(weight.scalar_type() != at::kBFloat16 || weight.size(1) % 2 == 0, name,
                    ": bfloat16 packs k in pairs and needs an even in_features, got shape ", weight.sizes());
}

at::Tensor pack_linear_weight_impl(const at::Tensor& weight) {
  check_args(kPackSpec, {weight});
  check_even_in_features(weight, "weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  // The weight's own shape (csrc/linear/params.h): N * K elements in panel order.
  at::Tensor packed = at::empty({N, K}, weight.options());
  PackLinearParams p;
  p.w = weight.data_ptr();
  p.dtype = linear_dtype(weight);
  p.stride_n = weight.stride(0);
  p.stride_k = weight.stride(1);
  p.packed = packed.data_ptr();
  p.K = K;
  p.N = N;
  pack_linear_weight_cpu(p);
  return packed;
}

at::Tensor unpack_linear_weight_impl(const at::Tensor& packed) {
  check_args(kUnpackSpec, {packed});
  check_even_in_features(packed, "packed");
  const int64_t N = packed.size(0), K = packed.size(1);
  at::Tensor weight = at::empty({N, K}, packed.options());
  PackLinearParams p;
  p.w = weight.data_ptr();
  p.stride_n = K;
  p.stride_k = 1;
  p.packed = packed.data_ptr();
  p.dtype = linear_dtype(packed);
  p.K = K;
  p.N = N;
  unpack_linear_weight_cpu(p);
  return weight;
}

at::Tensor packed_linear_impl(const at::Tensor& x, const at::Tensor& packed,
                              const std::optional<at::Tensor>& bias, bool silu_and_mul) {
  check_args(kPackedLinearSpec, {x, packed, bias});
  check_even_in_features(packed, "packed");
  const int64_t out_features = packed.size(0), K = packed.size(1);
  check_linear_input(x, K, silu_and_mul, "packed", packed);
  const DType dt = linear_dtype(x);
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end());
  out_shape.back() = out_features;
  const int64_t M = x.numel() / x.size(-1);
  at::Tensor y = at::empty(out_shape, x.options());
  PackedLinearParams p;
  p.x = x.data_ptr();
  p.x_row_stride = row_stride(x);
  p.packed = packed.data_ptr();
  p.bias = bias.has_value() ? bias->data_ptr() : nullptr;
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
