// causal_attention: the schema, the argument checks and the one impl (CPU kernel or CUDA launch).
#include "attention.h"

#include <ATen/ops/empty.h>

#include <cmath>
#include <mutex>
#include <vector>

#ifdef FLUID_RT_WITH_CUDA
#include "attention/cuda_launch.h"
#endif

namespace fluid_rt {
namespace {

// The rules across arguments that the table cannot say.
void check_attention_rules(const at::Tensor& q, const at::Tensor& k_cache, const std::optional<at::Tensor>& k,
                           const std::optional<at::Tensor>& v,
                           const std::optional<at::Tensor>& cache_batch_idx) {
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Bc = k_cache.size(0), S_max = k_cache.size(1), Hkv = k_cache.size(2);
  FLUID_CHECK_VALUE(attention_head_dim_supported(D),
                    "q: head dim (dim 3) must be one of 16, 32, 64, 80, 96, 128, 256, got ", D);
  FLUID_CHECK_VALUE(Hq % Hkv == 0, "q: the number of query heads (", Hq,
                    ") must be a multiple of the kv heads of ", "k_cache (", Hkv, ")");
  FLUID_CHECK_VALUE(k.has_value() == v.has_value(), k.has_value() ? "v" : "k",
                    ": k and v must be given together (both or neither)");
  FLUID_CHECK_VALUE(T <= S_max, "q: ", T, " query tokens cannot fit a cache of length ", S_max,
                    " (k_cache dim 1)");
  FLUID_CHECK_VALUE(cache_batch_idx.has_value() || Bc >= B, "k_cache: has ", Bc, " rows (dim 0) but q has ",
                    B, " (pass cache_batch_idx to map query rows to cache rows)");
}

}  // namespace

CausalAttentionParams describe_causal_attention(const at::Tensor& q, const at::Tensor& k_cache,
                                                const at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                const std::optional<at::Tensor>& k,
                                                const std::optional<at::Tensor>& v,
                                                const std::optional<at::Tensor>& cache_batch_idx,
                                                std::optional<double> softmax_scale) {
  check_args(kCausalAttentionSpec, {q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx});
  check_attention_rules(q, k_cache, k, v, cache_batch_idx);
  const int64_t D = q.size(3);
  const double scale = softmax_scale.value_or(1.0 / std::sqrt(static_cast<double>(D)));
  FLUID_CHECK_VALUE(std::isfinite(scale), "softmax_scale: must be finite, got ", scale);

  CausalAttentionParams p;
  p.q = q.data_ptr();
  p.q_stride_b = q.stride(0);
  p.q_stride_t = q.stride(1);
  p.q_stride_h = q.stride(2);
  p.k_cache = k_cache.data_ptr();
  p.v_cache = v_cache.data_ptr();
  p.cache_seqlens = cache_seqlens.data_ptr<int32_t>();
  if (k.has_value()) {
    p.k_new = k->data_ptr();
    p.k_new_stride_b = k->stride(0);
    p.k_new_stride_t = k->stride(1);
    p.k_new_stride_h = k->stride(2);
    p.v_new = v->data_ptr();
    p.v_new_stride_b = v->stride(0);
    p.v_new_stride_t = v->stride(1);
    p.v_new_stride_h = v->stride(2);
  }
  p.cache_batch_idx = cache_batch_idx.has_value() ? cache_batch_idx->data_ptr<int32_t>() : nullptr;
  p.batch = q.size(0);
  p.seqlen_q = q.size(1);
  p.heads_q = q.size(2);
  p.heads_kv = k_cache.size(2);
  p.head_dim = D;
  p.cache_batch = k_cache.size(0);
  p.cache_len = k_cache.size(1);
  p.softmax_scale = static_cast<float>(scale);
  p.dtype = float_dtype_of(q, "q");
  return p;
}

std::tuple<at::Tensor, at::Tensor> causal_attention_outputs(const at::Tensor& q, CausalAttentionParams& p) {
  at::Tensor out = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.seqlen_q, p.heads_q}, q.options().dtype(at::kFloat));
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  return {out, lse};
}

// On the CPU the lengths and row indices are plain host values: check them so the kernel never
// goes out of range, and no two query rows write the same cache row. (On CUDA that would be a host
// sync: the kernel guards them instead.)
void check_attention_host_values(const CausalAttentionParams& p) {
  std::vector<int64_t> writer(p.cache_batch_idx && p.k_new ? p.cache_batch : 0, -1);
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.cache_seqlens[b];
    FLUID_CHECK_VALUE(len >= 0 && len + p.seqlen_q <= p.cache_len, "cache_seqlens: row ", b, " has ", len,
                      " cached tokens; with ", p.seqlen_q,
                      " query tokens it needs 0 <= cache_seqlens[b] <= ", p.cache_len - p.seqlen_q,
                      " (k_cache dim 1 is ", p.cache_len, ")");
    if (!p.cache_batch_idx) continue;
    const int64_t row = p.cache_batch_idx[b];
    FLUID_CHECK_VALUE(row >= 0 && row < p.cache_batch, "cache_batch_idx: entry ", b, " is ", row,
                      ", out of range for ", p.cache_batch, " cache rows (k_cache dim 0)");
    if (writer.empty()) continue;
    FLUID_CHECK_VALUE(writer[row] < 0, "cache_batch_idx: entries ", writer[row], " and ", b,
                      " are both cache row ", row,
                      ", and k/v are given: two query rows would write the same cache slots");
    writer[row] = b;
  }
}

namespace {

#ifdef FLUID_RT_WITH_CUDA
// SM count per device, queried once (an attribute query, not a device sync).
int sm_count(int device) {
  static std::mutex mu;
  static std::vector<int> counts;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(counts.size())) counts.resize(device + 1, 0);
  if (counts[device] == 0) {
    int n = 0;
    cudaError_t err = cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device);
    FLUID_CHECK(err == cudaSuccess, "causal_attention: cannot query the SM count of cuda:", device, ": ",
                cudaGetErrorString(err));
    counts[device] = n;
  }
  return counts[device];
}

// Split-KV plan, its workspace, and the launch.
void launch_on_cuda(const at::Tensor& q, CausalAttentionParams& p) {
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return;
  p.num_splits = causal_attention_cuda_num_splits(p, sm_count(q.device().index()));
  at::Tensor workspace;
  if (p.num_splits > 1) {
    const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
    workspace = at::empty({p.num_splits * rows * (p.head_dim + 1)}, q.options().dtype(at::kFloat));
    p.partial_out = workspace.data_ptr<float>();
    p.partial_lse = p.partial_out + p.num_splits * rows * p.head_dim;
  }
  check_cuda_launch(launch_causal_attention(p, current_stream_for(q)), "causal_attention");
}
#endif

}  // namespace

std::tuple<at::Tensor, at::Tensor> causal_attention_impl(const at::Tensor& q, at::Tensor& k_cache,
                                                         at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                         const std::optional<at::Tensor>& k,
                                                         const std::optional<at::Tensor>& v,
                                                         const std::optional<at::Tensor>& cache_batch_idx,
                                                         std::optional<double> softmax_scale) {
  CausalAttentionParams p =
      describe_causal_attention(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale);
  const DeviceScope scope(q);
  auto outputs = causal_attention_outputs(q, p);
  if (q.is_cpu()) {
    check_attention_host_values(p);
    causal_attention_cpu(p);
  } else {
#ifdef FLUID_RT_WITH_CUDA
    launch_on_cuda(q, p);
#endif
  }
  return outputs;
}

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) { m.def(kCausalAttentionSchema); }

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("causal_attention", &causal_attention_impl); }
#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) { m.impl("causal_attention", &causal_attention_impl); }
#endif

}  // namespace fluid_rt
