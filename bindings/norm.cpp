// rms_norm: schema, the one argument checker, and the CPU / CUDA impls (tensor -> params).
#include <ATen/ops/empty_like.h>

#include <cmath>

#include "common.h"
#include "norm/params.h"

#ifdef FLUID_RT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

namespace fluid_rt {
namespace {

RmsNormParams make_params(const at::Tensor& x, const at::Tensor& weight, double eps,
                          const std::optional<at::Tensor>& add) {
  check_supported_device(x, "x");
  const DType dt = float_dtype_of(x, "x");
  FLUID_CHECK_VALUE(x.dim() >= 1, "x: expected a tensor of shape [..., H], got a 0-d tensor");
  check_contiguous(x, "x");
  const int64_t H = x.size(-1);
  FLUID_CHECK_VALUE(H >= 1, "x: the hidden dim (last) must be >= 1, got shape ", x.sizes());
  check_same_device(weight, x, "weight", "x");
  check_dtype(weight, x.scalar_type(), "weight");
  check_rank(weight, 1, "weight");
  check_size(weight, 0, H, "weight", "hidden");
  check_contiguous(weight, "weight");
  FLUID_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: must be finite and >= 0, got ", eps);
  RmsNormParams p;
  p.dtype = dt;
  p.hidden = H;
  p.rows = H > 0 ? x.numel() / H : 0;
  p.eps = static_cast<float>(eps);
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  if (add.has_value()) {
    const at::Tensor& a = *add;
    check_same_device(a, x, "add", "x");
    check_dtype(a, x.scalar_type(), "add");
    FLUID_CHECK_VALUE(a.sizes() == x.sizes(), "add: expected the shape of x ", x.sizes(), ", got ", a.sizes());
    // Rows of add must sit at one stride (e.g. a slice of a wider tensor), like x's rows.
    const int64_t row_stride = collapsed_row_stride(a, "add");
    check_no_overlap(x, "x", a, "add");
    p.add = a.data_ptr();
    p.add_row_stride = row_stride;
  }
  return p;
}

at::Tensor rms_norm_cpu_impl(const at::Tensor& x, const at::Tensor& weight, double eps,
                             const std::optional<at::Tensor>& add) {
  RmsNormParams p = make_params(x, weight, eps, add);
  FLUID_CHECK(x.is_cpu(), "x: expected a CPU tensor, got ", x.device());
  at::Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  rms_norm_cpu(p);
  return out;
}

#ifdef FLUID_RT_WITH_CUDA
at::Tensor rms_norm_cuda_impl(const at::Tensor& x, const at::Tensor& weight, double eps,
                              const std::optional<at::Tensor>& add) {
  RmsNormParams p = make_params(x, weight, eps, add);
  FLUID_CHECK(x.is_cuda(), "x: expected a CUDA tensor, got ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  const int err = launch_rms_norm(p, reinterpret_cast<CUstream_st*>(current_stream_for(x)));
  FLUID_CHECK(err == 0, "rms_norm: CUDA launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
  return out;
}
#endif

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("rms_norm(Tensor(a!) x, Tensor weight, float eps, Tensor? add=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("rms_norm", &fluid_rt::rms_norm_cpu_impl); }

#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) { m.impl("rms_norm", &fluid_rt::rms_norm_cuda_impl); }
#endif
