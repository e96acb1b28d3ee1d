// token_entropy: the schema, the argument checks and the one impl (CPU kernel or CUDA launch).
#include "entropy.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <limits>

namespace fluid_rt {

TokenEntropyParams describe_token_entropy(const at::Tensor& logits, double temperature) {
  check_args(kTokenEntropySpec, {logits});
  const int64_t V = logits.size(-1);
  FLUID_CHECK_VALUE(V <= std::numeric_limits<int32_t>::max(), "logits: V must be < 2^31, got ", V);
  FLUID_CHECK_VALUE(std::isfinite(temperature) && temperature > 0.0,
                    "temperature: must be finite and > 0, got ", temperature);
  const float inv_t = static_cast<float>(1.0 / temperature);
  FLUID_CHECK_VALUE(std::isfinite(inv_t),
                    "temperature: 1/temperature must be finite in float32 (temperature >= ~2.9e-39), got ",
                    temperature);
  TokenEntropyParams p;
  p.dtype = float_dtype_of(logits, "logits");
  p.logits = logits.data_ptr();
  p.rows = logits.numel() / V;
  p.vocab = V;
  p.row_stride = row_stride(logits);
  p.inv_temperature = inv_t;
  return p;
}

TokenEntropyOutputs token_entropy_outputs(const at::Tensor& logits, TokenEntropyParams& p) {
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

namespace {

#ifdef FLUID_RT_WITH_CUDA
void launch_on_cuda(const at::Tensor& logits, const TokenEntropyParams& p) {
  if (p.rows == 0) return;
  const int splits = token_entropy_cuda_splits(p.rows, p.vocab, logits.device().index());
  at::Tensor workspace;
  if (splits > 1) {
    workspace = at::empty({static_cast<int64_t>(token_entropy_cuda_workspace_bytes(p.rows, splits))},
                          logits.options().dtype(at::kByte));
  }
  const int err = launch_token_entropy(p, splits, splits > 1 ? workspace.data_ptr() : nullptr,
                                       current_stream_for(logits));
  check_cuda_launch(static_cast<cudaError_t>(err), "token_entropy");
}
#endif

TokenEntropyOutputs token_entropy_impl(const at::Tensor& logits, double temperature) {
  TokenEntropyParams p = describe_token_entropy(logits, temperature);
  const DeviceScope scope(logits);
  TokenEntropyOutputs out = token_entropy_outputs(logits, p);
  if (logits.is_cpu()) {
    p.num_threads = at::get_num_threads();
    token_entropy_cpu(p);
  } else {
#ifdef FLUID_RT_WITH_CUDA
    launch_on_cuda(logits, p);
#endif
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) { m.def(kTokenEntropySchema); }

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("token_entropy", &token_entropy_impl); }
#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) { m.impl("token_entropy", &token_entropy_impl); }
#endif

}  // namespace fluid_rt
