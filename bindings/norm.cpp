// rms_norm: the schema, the argument checks and the one impl (CPU kernel or CUDA launch).
#include "norm.h"

#include <ATen/ops/empty_like.h>

#include <cmath>

namespace fluid_rt {

RmsNormParams describe_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                                const std::optional<at::Tensor>& add) {
  check_args(kRmsNormSpec, {x, weight, add});
  FLUID_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: must be finite and >= 0, got ", eps);
  RmsNormParams p;
  p.dtype = float_dtype_of(x, "x");
  p.hidden = x.size(-1);
  p.rows = x.numel() / p.hidden;
  p.eps = static_cast<float>(eps);
  p.x = x.data_ptr();
  p.weight = weight.data_ptr();
  if (add.has_value()) {
    p.add = add->data_ptr();
    p.add_row_stride = row_stride(*add);
  }
  return p;
}

at::Tensor rms_norm_impl(const at::Tensor& x, const at::Tensor& weight, double eps,
                         const std::optional<at::Tensor>& add) {
  RmsNormParams p = describe_rms_norm(x, weight, eps, add);
  const DeviceScope scope(x);
  at::Tensor out = at::empty_like(x);
  p.out = out.data_ptr();
  if (x.is_cpu()) {
    rms_norm_cpu(p);
  } else {
#ifdef FLUID_RT_WITH_CUDA
    const int err = launch_rms_norm(p, current_stream_for(x));
    check_cuda_launch(static_cast<cudaError_t>(err), "rms_norm");
#endif
  }
  return out;
}

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) { m.def(kRmsNormSchema); }

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("rms_norm", &rms_norm_impl); }
#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) { m.impl("rms_norm", &rms_norm_impl); }
#endif

}  // namespace fluid_rt
