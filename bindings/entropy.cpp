// token_entropy: schema, the one argument checker, and the CPU / CUDA impls (tensor -> params).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "common.h"

#ifdef FLUID_RT_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#endif
#include "entropy/params.h"

namespace fluid_rt {
namespace {

// Validates logits/temperature and fills everything of the params but the output pointers.
// Rows must be addressable as logits + r * row_stride with stride 1 inside a row: the leading dims
// (ignoring size-1 dims) must collapse into one stride.
TokenEntropyParams make_params(const at::Tensor& logits, double temperature) {
  FLUID_CHECK_VALUE(logits.defined(), "logits: expected a tensor");
  check_supported_device(logits, "logits");
  TokenEntropyParams p;
  p.dtype = float_dtype_of(logits, "logits");
  FLUID_CHECK_VALUE(logits.dim() >= 1, "logits: expected a tensor of shape [..., V], got a 0-d tensor");
  const int64_t V = logits.size(-1);
  FLUID_CHECK_VALUE(V >= 1, "logits: the vocabulary dim (last) must be >= 1, got shape ", logits.sizes());
  FLUID_CHECK_VALUE(V <= std::numeric_limits<int32_t>::max(), "logits: V must be < 2^31, got ", V);
  check_last_dim_contiguous(logits, "logits");

  const int64_t lead = logits.dim() - 1;
  int64_t total_rows = 1;
  for (int64_t d = 0; d < lead; ++d) total_rows *= logits.size(d);
  int64_t rows = 1, row_stride = V, expect = -1;  // expect: the stride the next-outer dim must have
  bool first = true;
  for (int64_t d = lead - 1; d >= 0; --d) {
    const int64_t n = logits.size(d), st = logits.stride(d);
    rows *= n;
    if (n == 1 || total_rows == 0) continue;  // nothing to address
    if (first) {
      row_stride = st, first = false;
    } else {
      FLUID_CHECK_VALUE(st == expect, "logits: the leading dims must collapse to one row stride (rows at ",
                        "logits + r * row_stride), got shape ", logits.sizes(), " strides ", logits.strides());
    }
    expect = st * n;
  }
  FLUID_CHECK_VALUE(row_stride >= 0, "logits: negative strides are not supported, got ", logits.strides());

  FLUID_CHECK_VALUE(std::isfinite(temperature) && temperature > 0.0,
                    "temperature: must be finite and > 0, got ", temperature);
  const float inv_t = static_cast<float>(1.0 / temperature);
  FLUID_CHECK_VALUE(std::isfinite(inv_t),
                    "temperature: 1/temperature must be finite in float32 (temperature >= ~2.9e-39), got ",
                    temperature);

  p.logits = logits.data_ptr();
  p.rows = rows;
  p.vocab = V;
  p.row_stride = row_stride;
  p.inv_temperature = inv_t;
  return p;
}

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs allocate(const at::Tensor& logits, TokenEntropyParams& p) {
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor entropy = at::empty(lead, f32), max_prob = at::empty(lead, f32), lse = at::empty(lead, f32);
  at::Tensor argmax = at::empty(lead, logits.options().dtype(at::kLong));
  p.entropy = entropy.data_ptr<float>();
  p.max_prob = max_prob.data_ptr<float>();
  p.logsumexp = lse.data_ptr<float>();
  p.argmax = argmax.data_ptr<int64_t>();
  return {entropy, max_prob, argmax, lse};
}

Outputs token_entropy_cpu_impl(const at::Tensor& logits, double temperature) {
  FLUID_CHECK(logits.is_cpu(), "logits: expected a CPU tensor, got ", logits.device());
  TokenEntropyParams p = make_params(logits, temperature);
  Outputs out = allocate(logits, p);
  p.num_threads = at::get_num_threads();
  token_entropy_cpu(p);
  return out;
}

#ifdef FLUID_RT_WITH_CUDA
Outputs token_entropy_cuda_impl(const at::Tensor& logits, double temperature) {
  FLUID_CHECK(logits.is_cuda(), "logits: expected a CUDA tensor, got ", logits.device());
  c10::cuda::CUDAGuard guard(logits.device());
  TokenEntropyParams p = make_params(logits, temperature);
  Outputs out = allocate(logits, p);
  if (p.rows == 0) return out;
  const int splits = token_entropy_cuda_splits(p.rows, p.vocab, logits.device().index());
  at::Tensor workspace;
  if (splits > 1) {
    workspace = at::empty({static_cast<int64_t>(token_entropy_cuda_workspace_bytes(p.rows, splits))},
                          logits.options().dtype(at::kByte));
  }
  const int err = launch_token_entropy(p, splits, splits > 1 ? workspace.data_ptr() : nullptr,
                                       current_stream_for(logits));
  C10_CUDA_CHECK(static_cast<cudaError_t>(err));
  return out;
}
#endif

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def("token_entropy(Tensor logits, float temperature=1.0) -> (Tensor entropy, Tensor max_prob, "
        "Tensor argmax, Tensor logsumexp)");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("token_entropy", &fluid_rt::token_entropy_cpu_impl); }

#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) { m.impl("token_entropy", &fluid_rt::token_entropy_cuda_impl); }
#endif
