// causal_attention: schema, the one argument checker, and the CPU / CUDA impls
// (tensors -> CausalAttentionParams -> csrc/attention).
#include <ATen/ops/empty.h>

#include <cmath>
#include <mutex>
#include <tuple>
#include <vector>

#include "attention/params.h"
#include "common.h"

#ifdef FLUID_RT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>

#include "attention/cuda_launch.h"
#endif

namespace fluid_rt {
namespace {

// Checks every argument (never reading device memory) and fills the params, outputs excluded.
CausalAttentionParams check_and_describe(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                                         const at::Tensor& cache_seqlens, const std::optional<at::Tensor>& k,
                                         const std::optional<at::Tensor>& v,
                                         const std::optional<at::Tensor>& cache_batch_idx,
                                         std::optional<double> softmax_scale) {
  check_supported_device(q, "q");
  check_same_device(k_cache, q, "k_cache", "q");
  check_same_device(v_cache, q, "v_cache", "q");
  check_same_device(cache_seqlens, q, "cache_seqlens", "q");

  const DType dt = float_dtype_of(q, "q");
  check_rank(q, 4, "q");
  check_rank(k_cache, 4, "k_cache");
  check_rank(v_cache, 4, "v_cache");
  check_dtype(k_cache, q.scalar_type(), "k_cache");
  check_dtype(v_cache, q.scalar_type(), "v_cache");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3);
  const int64_t Bc = k_cache.size(0), S_max = k_cache.size(1), Hkv = k_cache.size(2);
  FLUID_CHECK_VALUE(attention_head_dim_supported(D), "q: head dim (dim 3) must be one of 16, 32, 64, 80, 96, 128, 256, got ",
                    D);
  check_last_dim_contiguous(q, "q");
  FLUID_CHECK_VALUE(Hkv > 0, "k_cache: the number of kv heads (dim 2) must be positive, got shape ", k_cache.sizes());
  FLUID_CHECK_VALUE(Hq % Hkv == 0, "q: the number of query heads (", Hq, ") must be a multiple of the kv heads of ",
                    "k_cache (", Hkv, ")");
  check_size(k_cache, 3, D, "k_cache", "head dim, as q");
  FLUID_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ", k_cache.sizes(),
                    ", got ", v_cache.sizes());
  check_contiguous(k_cache, "k_cache");
  check_contiguous(v_cache, "v_cache");

  check_dtype(cache_seqlens, at::kInt, "cache_seqlens");
  check_rank(cache_seqlens, 1, "cache_seqlens");
  check_size(cache_seqlens, 0, B, "cache_seqlens", "batch, as q");
  FLUID_CHECK_VALUE(cache_seqlens.stride(0) == 1 || B <= 1, "cache_seqlens: expected a contiguous tensor, got strides ",
                    cache_seqlens.strides());

  FLUID_CHECK_VALUE(k.has_value() == v.has_value(), k.has_value() ? "v" : "k",
                    ": k and v must be given together (both or neither)");
  const std::pair<const std::optional<at::Tensor>*, const char*> news[] = {{&k, "k"}, {&v, "v"}};
  for (auto [t, name] : news) {
    if (!t->has_value()) continue;
    const at::Tensor& x = **t;
    check_same_device(x, q, name, "q");
    check_dtype(x, q.scalar_type(), name);
    check_rank(x, 4, name);
    FLUID_CHECK_VALUE(x.size(0) == B && x.size(1) == T && x.size(2) == Hkv && x.size(3) == D, name,
                      ": expected shape [", B, ", ", T, ", ", Hkv, ", ", D, "] (batch, tokens of q; kv heads, head dim "
                      "of k_cache), got ", x.sizes());
    check_last_dim_contiguous(x, name);
  }
  FLUID_CHECK_VALUE(T <= S_max, "q: ", T, " query tokens cannot fit a cache of length ", S_max, " (k_cache dim 1)");

  if (cache_batch_idx.has_value()) {
    const at::Tensor& idx = *cache_batch_idx;
    check_same_device(idx, q, "cache_batch_idx", "q");
    check_dtype(idx, at::kInt, "cache_batch_idx");
    check_rank(idx, 1, "cache_batch_idx");
    check_size(idx, 0, B, "cache_batch_idx", "batch, as q");
    FLUID_CHECK_VALUE(idx.stride(0) == 1 || B <= 1, "cache_batch_idx: expected a contiguous tensor, got strides ",
                      idx.strides());
  } else {
    FLUID_CHECK_VALUE(Bc >= B, "k_cache: has ", Bc, " rows (dim 0) but q has ", B,
                      " (pass cache_batch_idx to map query rows to cache rows)");
  }

  // The caches are written: nothing read may alias them, and they may not alias each other.
  check_no_overlap(k_cache, "k_cache", v_cache, "v_cache");
  const std::pair<const at::Tensor*, const char*> cache_list[] = {{&k_cache, "k_cache"}, {&v_cache, "v_cache"}};
  for (auto [c, cname] : cache_list) {
    check_no_overlap(q, "q", *c, cname);
    check_no_overlap(cache_seqlens, "cache_seqlens", *c, cname);
    if (k.has_value()) check_no_overlap(*k, "k", *c, cname);
    if (v.has_value()) check_no_overlap(*v, "v", *c, cname);
    if (cache_batch_idx.has_value()) check_no_overlap(*cache_batch_idx, "cache_batch_idx", *c, cname);
  }

  double scale = softmax_scale.has_value() ? *softmax_scale : 1.0 / std::sqrt(static_cast<double>(D));
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
  p.batch = B;
  p.seqlen_q = T;
  p.heads_q = Hq;
  p.heads_kv = Hkv;
  p.head_dim = D;
  p.cache_batch = Bc;
  p.cache_len = S_max;
  p.softmax_scale = static_cast<float>(scale);
  p.dtype = dt;
  return p;
}

std::tuple<at::Tensor, at::Tensor> causal_attention_cpu_impl(const at::Tensor& q, at::Tensor& k_cache,
                                                             at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                             const std::optional<at::Tensor>& k,
                                                             const std::optional<at::Tensor>& v,
                                                             const std::optional<at::Tensor>& cache_batch_idx,
                                                             std::optional<double> softmax_scale) {
  CausalAttentionParams p =
      check_and_describe(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale);
  // On the CPU the lengths and row indices are plain host values: check them here so the kernel
  // never goes out of range, and no two query rows write the same cache row.
  std::vector<int64_t> writer(p.cache_batch_idx && p.k_new ? p.cache_batch : 0, -1);
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t len = p.cache_seqlens[b];
    FLUID_CHECK_VALUE(len >= 0 && len + p.seqlen_q <= p.cache_len, "cache_seqlens: row ", b, " has ", len,
                      " cached tokens; with ", p.seqlen_q, " query tokens it needs 0 <= cache_seqlens[b] <= ",
                      p.cache_len - p.seqlen_q, " (k_cache dim 1 is ", p.cache_len, ")");
    if (p.cache_batch_idx) {
      const int64_t row = p.cache_batch_idx[b];
      FLUID_CHECK_VALUE(row >= 0 && row < p.cache_batch, "cache_batch_idx: entry ", b, " is ", row,
                        ", out of range for ", p.cache_batch, " cache rows (k_cache dim 0)");
      if (!writer.empty()) {
        FLUID_CHECK_VALUE(writer[row] < 0, "cache_batch_idx: entries ", writer[row], " and ", b,
                          " are both cache row ", row, ", and k/v are given: two query rows would write ",
                          "the same cache slots");
        writer[row] = b;
      }
    }
  }
  at::Tensor out = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.seqlen_q, p.heads_q}, q.options().dtype(at::kFloat));
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  causal_attention_cpu(p);
  return {out, lse};
}

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

std::tuple<at::Tensor, at::Tensor> causal_attention_cuda_impl(const at::Tensor& q, at::Tensor& k_cache,
                                                              at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                              const std::optional<at::Tensor>& k,
                                                              const std::optional<at::Tensor>& v,
                                                              const std::optional<at::Tensor>& cache_batch_idx,
                                                              std::optional<double> softmax_scale) {
  CausalAttentionParams p =
      check_and_describe(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale);
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor out = at::empty({p.batch, p.seqlen_q, p.heads_q, p.head_dim}, q.options());
  at::Tensor lse = at::empty({p.batch, p.seqlen_q, p.heads_q}, q.options().dtype(at::kFloat));
  p.out = out.data_ptr();
  p.lse = lse.data_ptr<float>();
  if (p.batch == 0 || p.seqlen_q == 0 || p.heads_q == 0) return {out, lse};
  p.num_splits = causal_attention_cuda_num_splits(p, sm_count(q.device().index()));
  at::Tensor workspace;
  if (p.num_splits > 1) {
    const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
    workspace = at::empty({p.num_splits * rows * (p.head_dim + 1)}, q.options().dtype(at::kFloat));
    p.partial_out = workspace.data_ptr<float>();
    p.partial_lse = p.partial_out + p.num_splits * rows * p.head_dim;
  }
  cudaError_t err = launch_causal_attention(p, current_stream_for(q));
  FLUID_CHECK(err == cudaSuccess, "causal_attention: CUDA launch failed: ", cudaGetErrorString(err));
  return {out, lse};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) {
  m.def(
      "causal_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_seqlens, Tensor? k=None, "
      "Tensor? v=None, Tensor? cache_batch_idx=None, float? softmax_scale=None) -> (Tensor out, Tensor lse)");
}

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("causal_attention", &causal_attention_cpu_impl); }

#ifdef FLUID_RT_WITH_CUDA
TORCH_LIBRARY_IMPL(fluid_rt, CUDA, m) { m.impl("causal_attention", &causal_attention_cuda_impl); }
#endif

}  // namespace fluid_rt
