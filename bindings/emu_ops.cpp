// torch.ops.fluid_rt_emu.*: the CUDA kernels of csrc/*/cuda_kernels.cuh run on CPU tensors by the
// emulator (csrc/emu), with the schemas of torch.ops.fluid_rt.* (built with FLUID_RT_CUDA_EMU=1, for
// CI; see DEVELOPERS.md). What the bindings add around a launch:
// * every tensor the kernels see is a guarded copy (csrc/emu/guard.h); outputs and workspaces start
//   poisoned (0xFF bytes), so an element the kernels forget reads NaN / -1;
// * the launch runs once per thread order of the schedule (forward, reverse, seeded random by
//   default): results that differ reveal a race or a missing barrier and raise RuntimeError;
// * then the guard zones are checked (an overwritten canary raises), and outputs and in-place
//   arguments are written back.
// Values only the device knows (lengths, indices) are not checked here: as on CUDA, the kernels
// guard them (NaN rows, cleared flags), and the tests check that they do.
// Argument checks mirror the CUDA impls' (bindings/<family>.cpp) for shapes, dtypes and layouts.
#ifdef FLUID_RT_CUDA_EMU
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "common.h"
#include "emu/guard.h"
#include "emu/launchers.h"

namespace fluid_rt {
namespace {

// --- guarded copies and the multi-order run -------------------------------------------------------

// Byte range [lo, lo + bytes) of a view (non-negative strides), relative to its data pointer: lo = 0.
size_t view_span_bytes(const at::Tensor& t, const char* name) {
  if (t.numel() == 0) return 0;
  int64_t hi = 0;
  for (int64_t d = 0; d < t.dim(); ++d) {
    FLUID_CHECK_VALUE(t.stride(d) >= 0, name, ": negative strides are not supported, got ", t.strides());
    hi += (t.size(d) - 1) * t.stride(d);
  }
  return static_cast<size_t>(hi + 1) * t.element_size();
}

struct GuardedArg {
  at::Tensor tensor;
  std::string name;
  bool write_back;
  std::unique_ptr<emu::GuardedBuffer> buf;
};

// The guarded copies of one run.
class EmuArgs {
 public:
  // A copy of t (inputs and in-place arguments; write_back: copied back after the run).
  void* in(const at::Tensor& t, const char* name, bool write_back = false) {
    return add(t, name, write_back, /*poison=*/false);
  }
  // A poisoned stand-in for an output tensor, copied into it after the run.
  void* out(const at::Tensor& t, const char* name) { return add(t, name, true, /*poison=*/true); }
  // A poisoned workspace of `bytes` bytes.
  void* scratch(size_t bytes, const char* name) {
    args_.push_back(GuardedArg{at::Tensor(), name, false, std::make_unique<emu::GuardedBuffer>(nullptr, bytes, 0)});
    return args_.back().buf->data();
  }

  void check_guards(const char* op) const {
    for (const GuardedArg& a : args_)
      FLUID_CHECK(a.buf->guards_intact(), op, ": the emulated CUDA kernels wrote outside ", a.name,
                  " (a guard zone of the emulator changed)");
  }
  // Where two runs differ (the first argument whose bytes differ), or "" when they agree.
  std::string differs_from(const EmuArgs& o) const {
    for (size_t i = 0; i < args_.size(); ++i) {
      if (!args_[i].write_back && args_[i].tensor.defined()) continue;  // inputs are never written
      if (std::memcmp(args_[i].buf->data(), o.args_[i].buf->data(), args_[i].buf->size()) != 0) return args_[i].name;
    }
    return "";
  }
  void write_back() const {
    for (const GuardedArg& a : args_)
      if (a.write_back && a.buf->size() > 0) std::memcpy(a.tensor.data_ptr(), a.buf->data(), a.buf->size());
  }

 private:
  void* add(const at::Tensor& t, const char* name, bool write_back, bool poison) {
    const size_t bytes = view_span_bytes(t, name);
    const void* src = bytes > 0 && !poison ? t.data_ptr() : nullptr;
    const uintptr_t align = bytes > 0 ? reinterpret_cast<uintptr_t>(t.data_ptr()) : 0;
    args_.push_back(GuardedArg{t, name, write_back, std::make_unique<emu::GuardedBuffer>(src, bytes, align)});
    return args_.back().buf->data();
  }
  std::vector<GuardedArg> args_;
};

struct EmuSchedule {
  std::vector<emu::Order> orders{emu::Order::kForward, emu::Order::kReverse, emu::Order::kRandom};
};
EmuSchedule& schedule() {
  static EmuSchedule s;
  return s;
}

const char* order_name(emu::Order o) {
  return o == emu::Order::kForward ? "forward" : o == emu::Order::kReverse ? "reverse" : "random";
}

// Runs `launch` (fill params from the guarded copies, launch) once per order of the schedule,
// compares the results, checks the guards, and writes the first run's results back.
void run_in_orders(const char* op, const std::function<void(EmuArgs&)>& launch) {
  const emu::Config saved = emu::get_config();
  std::vector<EmuArgs> runs;
  try {
    for (emu::Order order : schedule().orders) {
      emu::Config c = saved;
      c.order = order;
      emu::set_config(c);
      runs.emplace_back();
      launch(runs.back());
      runs.back().check_guards(op);
    }
  } catch (const emu::EmuError& e) {
    emu::set_config(saved);
    FLUID_CHECK(false, op, ": ", e.what());
  } catch (...) {
    emu::set_config(saved);
    throw;
  }
  emu::set_config(saved);
  for (size_t i = 1; i < runs.size(); ++i) {
    const std::string where = runs[i].differs_from(runs[0]);
    FLUID_CHECK(where.empty(), op, ": the emulated CUDA kernels give different ", where, " when the threads of a ",
                "block run in ", order_name(schedule().orders[0]), " and in ", order_name(schedule().orders[i]),
                " order: a race on shared memory or a missing barrier");
  }
  if (!runs.empty()) runs[0].write_back();
}

void check_cpu(const at::Tensor& t, const char* name) {
  FLUID_CHECK(t.is_cpu(), name, ": the emulated CUDA ops (fluid_rt_emu) take CPU tensors, got ", t.device());
}

// --- causal_attention -----------------------------------------------------------------------------

void check_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& cache_seqlens, const std::optional<at::Tensor>& k,
                     const std::optional<at::Tensor>& v, const std::optional<at::Tensor>& cache_batch_idx) {
  for (auto [t, name] : {std::pair{&q, "q"}, {&k_cache, "k_cache"}, {&v_cache, "v_cache"},
                         {&cache_seqlens, "cache_seqlens"}})
    check_cpu(*t, name);
  float_dtype_of(q, "q");
  check_rank(q, 4, "q");
  check_rank(k_cache, 4, "k_cache");
  check_dtype(k_cache, q.scalar_type(), "k_cache");
  check_dtype(v_cache, q.scalar_type(), "v_cache");
  const int64_t B = q.size(0), T = q.size(1), Hq = q.size(2), D = q.size(3), Hkv = k_cache.size(2);
  FLUID_CHECK_VALUE(attention_head_dim_supported(D), "q: head dim (dim 3) must be one of 16, 32, 64, 80, 96, 128, 256, got ", D);
  check_last_dim_contiguous(q, "q");
  FLUID_CHECK_VALUE(Hkv > 0 && Hq % Hkv == 0, "q: the number of query heads (", Hq,
                    ") must be a multiple of the kv heads of k_cache (", Hkv, ")");
  check_size(k_cache, 3, D, "k_cache", "head dim, as q");
  FLUID_CHECK_VALUE(v_cache.sizes() == k_cache.sizes(), "v_cache: expected the shape of k_cache ", k_cache.sizes(),
                    ", got ", v_cache.sizes());
  check_contiguous(k_cache, "k_cache");
  check_contiguous(v_cache, "v_cache");
  check_dtype(cache_seqlens, at::kInt, "cache_seqlens");
  check_rank(cache_seqlens, 1, "cache_seqlens");
  check_size(cache_seqlens, 0, B, "cache_seqlens", "batch, as q");
  FLUID_CHECK_VALUE(k.has_value() == v.has_value(), "k, v: must be given together (both or neither)");
  for (auto [t, name] : {std::pair{&k, "k"}, {&v, "v"}}) {
    if (!t->has_value()) continue;
    check_cpu(**t, name);
    check_dtype(**t, q.scalar_type(), name);
    FLUID_CHECK_VALUE((*t)->dim() == 4 && (*t)->size(0) == B && (*t)->size(1) == T && (*t)->size(2) == Hkv &&
                          (*t)->size(3) == D,
                      name, ": expected shape [B, T, Hkv, D], got ", (*t)->sizes());
    check_last_dim_contiguous(**t, name);
  }
  FLUID_CHECK_VALUE(T <= k_cache.size(1), "q: ", T, " query tokens cannot fit a cache of length ", k_cache.size(1));
  if (cache_batch_idx.has_value()) {
    check_cpu(*cache_batch_idx, "cache_batch_idx");
    check_dtype(*cache_batch_idx, at::kInt, "cache_batch_idx");
    check_rank(*cache_batch_idx, 1, "cache_batch_idx");
    check_size(*cache_batch_idx, 0, B, "cache_batch_idx", "batch, as q");
  } else {
    FLUID_CHECK_VALUE(k_cache.size(0) >= B, "k_cache: has ", k_cache.size(0), " rows (dim 0) but q has ", B);
  }
}

CausalAttentionParams attention_params(EmuArgs& a, const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                                       const at::Tensor& cache_seqlens, const std::optional<at::Tensor>& k,
                                       const std::optional<at::Tensor>& v,
                                       const std::optional<at::Tensor>& cache_batch_idx, double scale) {
  CausalAttentionParams p;
  p.q = a.in(q, "q");
  p.q_stride_b = q.stride(0), p.q_stride_t = q.stride(1), p.q_stride_h = q.stride(2);
  p.k_cache = a.in(k_cache, "k_cache", true);
  p.v_cache = a.in(v_cache, "v_cache", true);
  p.cache_seqlens = static_cast<const int32_t*>(a.in(cache_seqlens.contiguous(), "cache_seqlens"));
  if (k.has_value()) {
    p.k_new = a.in(*k, "k");
    p.k_new_stride_b = k->stride(0), p.k_new_stride_t = k->stride(1), p.k_new_stride_h = k->stride(2);
    p.v_new = a.in(*v, "v");
    p.v_new_stride_b = v->stride(0), p.v_new_stride_t = v->stride(1), p.v_new_stride_h = v->stride(2);
  }
  if (cache_batch_idx.has_value())
    p.cache_batch_idx = static_cast<const int32_t*>(a.in(cache_batch_idx->contiguous(), "cache_batch_idx"));
  p.batch = q.size(0), p.seqlen_q = q.size(1), p.heads_q = q.size(2), p.head_dim = q.size(3);
  p.heads_kv = k_cache.size(2), p.cache_batch = k_cache.size(0), p.cache_len = k_cache.size(1);
  p.softmax_scale = static_cast<float>(scale);
  p.dtype = float_dtype_of(q, "q");
  return p;
}

std::tuple<at::Tensor, at::Tensor> causal_attention_emu(const at::Tensor& q, at::Tensor& k_cache, at::Tensor& v_cache,
                                                        const at::Tensor& cache_seqlens,
                                                        const std::optional<at::Tensor>& k,
                                                        const std::optional<at::Tensor>& v,
                                                        const std::optional<at::Tensor>& cache_batch_idx,
                                                        std::optional<double> softmax_scale) {
  check_attention(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx);
  const double scale = softmax_scale.has_value() ? *softmax_scale : 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  FLUID_CHECK_VALUE(std::isfinite(scale), "softmax_scale: must be finite, got ", scale);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kFloat));
  if (q.numel() == 0) return {out, lse};
  run_in_orders("causal_attention", [&](EmuArgs& a) {
    CausalAttentionParams p = attention_params(a, q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, scale);
    p.out = a.out(out, "out");
    p.lse = static_cast<float*>(a.out(lse, "lse"));
    p.num_splits = emu::causal_attention_num_splits(p);
    if (p.num_splits > 1) {
      const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
      p.partial_out = static_cast<float*>(a.scratch(sizeof(float) * p.num_splits * rows * p.head_dim, "partial_out"));
      p.partial_lse = static_cast<float*>(a.scratch(sizeof(float) * p.num_splits * rows, "partial_lse"));
    }
    emu::causal_attention(p);
  });
  return {out, lse};
}

// --- token_entropy ----------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_entropy_emu(const at::Tensor& logits,
                                                                             double temperature) {
  check_cpu(logits, "logits");
  float_dtype_of(logits, "logits");
  FLUID_CHECK_VALUE(logits.dim() >= 1 && logits.size(-1) >= 1, "logits: expected a tensor of shape [..., V], V >= 1");
  FLUID_CHECK_VALUE(logits.size(-1) <= INT32_MAX, "logits: V must be < 2^31");
  FLUID_CHECK_VALUE(std::isfinite(temperature) && temperature > 0.0 && std::isfinite(static_cast<float>(1.0 / temperature)),
                    "temperature: must be finite and > 0 (1/temperature finite in float32), got ", temperature);
  const int64_t V = logits.size(-1);
  const int64_t rows = V > 0 ? logits.numel() / V : 0;
  check_last_dim_contiguous(logits, "logits");
  const int64_t row_stride = rows > 1 ? collapsed_row_stride(logits, "logits") : V;
  const auto lead = logits.sizes().slice(0, logits.dim() - 1);
  const auto f32 = logits.options().dtype(at::kFloat);
  at::Tensor entropy = at::empty(lead, f32), max_prob = at::empty(lead, f32), lse = at::empty(lead, f32);
  at::Tensor argmax = at::empty(lead, logits.options().dtype(at::kLong));
  if (rows == 0) return {entropy, max_prob, argmax, lse};
  run_in_orders("token_entropy", [&](EmuArgs& a) {
    TokenEntropyParams p;
    p.logits = a.in(logits, "logits");
    p.dtype = float_dtype_of(logits, "logits");
    p.rows = rows, p.vocab = V, p.row_stride = row_stride;
    p.inv_temperature = static_cast<float>(1.0 / temperature);
    p.entropy = static_cast<float*>(a.out(entropy, "entropy"));
    p.max_prob = static_cast<float*>(a.out(max_prob, "max_prob"));
    p.logsumexp = static_cast<float*>(a.out(lse, "logsumexp"));
    p.argmax = static_cast<int64_t*>(a.out(argmax, "argmax"));
    const int splits = emu::token_entropy_splits(rows, V);
    void* ws = splits > 1 ? a.scratch(emu::token_entropy_workspace_bytes(rows, splits), "workspace") : nullptr;
    emu::token_entropy(p, splits, ws);
  });
  return {entropy, max_prob, argmax, lse};
}

// --- rms_norm ---------------------------------------------------------------------------------------

at::Tensor rms_norm_emu(const at::Tensor& x, const at::Tensor& weight, double eps, const std::optional<at::Tensor>& add) {
  check_cpu(x, "x");
  check_cpu(weight, "weight");
  float_dtype_of(x, "x");
  FLUID_CHECK_VALUE(x.dim() >= 1 && x.size(-1) >= 1, "x: expected a tensor of shape [..., H], H >= 1");
  check_contiguous(x, "x");
  const int64_t H = x.size(-1);
  check_dtype(weight, x.scalar_type(), "weight");
  check_rank(weight, 1, "weight");
  check_size(weight, 0, H, "weight", "hidden");
  check_contiguous(weight, "weight");
  FLUID_CHECK_VALUE(std::isfinite(eps) && eps >= 0, "eps: must be finite and >= 0, got ", eps);
  int64_t add_stride = 0;
  if (add.has_value()) {
    check_cpu(*add, "add");
    check_dtype(*add, x.scalar_type(), "add");
    FLUID_CHECK_VALUE(add->sizes() == x.sizes(), "add: expected the shape of x ", x.sizes(), ", got ", add->sizes());
    add_stride = collapsed_row_stride(*add, "add");
    check_no_overlap(x, "x", *add, "add");
  }
  at::Tensor out = at::empty_like(x);
  if (x.numel() == 0) return out;
  run_in_orders("rms_norm", [&](EmuArgs& a) {
    RmsNormParams p;
    p.x = a.in(x, "x", true);
    p.weight = a.in(weight, "weight");
    if (add.has_value()) p.add = a.in(*add, "add"), p.add_row_stride = add_stride;
    p.out = a.out(out, "out");
    p.dtype = float_dtype_of(x, "x");
    p.rows = x.numel() / H, p.hidden = H, p.eps = static_cast<float>(eps);
    emu::rms_norm(p);
  });
  return out;
}

// --- draft_commit / verify_commit -------------------------------------------------------------------

void check_commit_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t rows, int64_t cols) {
  check_cpu(t, name);
  check_dtype(t, dtype, name);
  check_rank(t, cols < 0 ? 1 : 2, name);
  check_size(t, 0, rows, name, "batch");
  if (cols >= 0) check_size(t, 1, cols, name, "Kmax");
  check_contiguous(t, name);
}

void draft_commit_emu(const at::Tensor& block, const at::Tensor& step, const at::Tensor& drafting, const at::Tensor& pred,
                      const at::Tensor& score, const at::Tensor& horizon, const at::Tensor& threshold,
                      int64_t mask_token_id, bool score_is_entropy) {
  check_rank(block, 2, "block");
  const int64_t B = block.size(0), kmax = block.size(1);
  FLUID_CHECK_VALUE(kmax >= 1, "block: Kmax (dim 1) must be >= 1, got shape ", block.sizes());
  check_commit_tensor(block, "block", at::kLong, B, kmax);
  check_commit_tensor(step, "step", at::kInt, B, -1);
  check_commit_tensor(drafting, "drafting", at::kBool, B, -1);
  check_commit_tensor(pred, "pred", at::kLong, B, kmax);
  check_commit_tensor(score, "score", at::kFloat, B, kmax);
  check_commit_tensor(horizon, "horizon", at::kInt, B, -1);
  check_commit_tensor(threshold, "threshold", at::kFloat, B, -1);
  if (B == 0) return;
  run_in_orders("draft_commit", [&](EmuArgs& a) {
    DraftCommitParams p;
    p.block = static_cast<int64_t*>(a.in(block, "block", true));
    p.step = static_cast<int32_t*>(a.in(step, "step", true));
    p.drafting = static_cast<bool*>(a.in(drafting, "drafting", true));
    p.pred = static_cast<const int64_t*>(a.in(pred, "pred"));
    p.score = static_cast<const float*>(a.in(score, "score"));
    p.horizon = static_cast<const int32_t*>(a.in(horizon, "horizon"));
    p.threshold = static_cast<const float*>(a.in(threshold, "threshold"));
    p.batch = B, p.kmax = kmax, p.mask_token_id = mask_token_id, p.score_is_entropy = score_is_entropy;
    emu::draft_commit(p);
  });
}

void verify_commit_emu(const at::Tensor& block, const at::Tensor& pred, const at::Tensor& horizon,
                       const at::Tensor& verifying, const at::Tensor& eos_ids, const at::Tensor& remask,
                       const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                       const at::Tensor& done, const at::Tensor& pending, const at::Tensor& cache_seqlens,
                       const at::Tensor& committed, const at::Tensor& mismatch) {
  check_rank(block, 2, "block");
  const int64_t B = block.size(0), kmax = block.size(1);
  FLUID_CHECK_VALUE(kmax >= 1, "block: Kmax (dim 1) must be >= 1, got shape ", block.sizes());
  check_commit_tensor(block, "block", at::kLong, B, kmax);
  check_commit_tensor(pred, "pred", at::kLong, B, kmax);
  check_rank(eos_ids, 2, "eos_ids");
  check_commit_tensor(eos_ids, "eos_ids", at::kLong, B, eos_ids.size(1));
  check_rank(out_tokens, 2, "out_tokens");
  check_commit_tensor(out_tokens, "out_tokens", at::kLong, B, out_tokens.size(1));
  const std::pair<const at::Tensor*, std::pair<const char*, at::ScalarType>> vectors[] = {
      {&horizon, {"horizon", at::kInt}},   {&verifying, {"verifying", at::kBool}}, {&remask, {"remask", at::kBool}},
      {&out_len, {"out_len", at::kInt}},   {&budget, {"budget", at::kInt}},       {&done, {"done", at::kBool}},
      {&pending, {"pending", at::kLong}},  {&cache_seqlens, {"cache_seqlens", at::kInt}},
      {&committed, {"committed", at::kInt}}, {&mismatch, {"mismatch", at::kInt}}};
  for (const auto& [t, spec] : vectors) check_commit_tensor(*t, spec.first, spec.second, B, -1);
  if (B == 0) return;
  run_in_orders("verify_commit", [&](EmuArgs& a) {
    VerifyCommitParams p;
    p.block = static_cast<const int64_t*>(a.in(block, "block"));
    p.pred = static_cast<const int64_t*>(a.in(pred, "pred"));
    p.horizon = static_cast<const int32_t*>(a.in(horizon, "horizon"));
    p.verifying = static_cast<bool*>(a.in(verifying, "verifying", true));
    p.eos_ids = static_cast<const int64_t*>(a.in(eos_ids, "eos_ids"));
    p.num_eos = eos_ids.size(1);
    p.remask = static_cast<const bool*>(a.in(remask, "remask"));
    p.out_tokens = static_cast<int64_t*>(a.in(out_tokens, "out_tokens", true));
    p.out_stride = out_tokens.size(1);
    p.out_len = static_cast<int32_t*>(a.in(out_len, "out_len", true));
    p.budget = static_cast<const int32_t*>(a.in(budget, "budget"));
    p.done = static_cast<bool*>(a.in(done, "done", true));
    p.pending = static_cast<int64_t*>(a.in(pending, "pending", true));
    p.cache_seqlens = static_cast<int32_t*>(a.in(cache_seqlens, "cache_seqlens", true));
    p.committed = static_cast<int32_t*>(a.in(committed, "committed", true));
    p.mismatch = static_cast<int32_t*>(a.in(mismatch, "mismatch", true));
    p.batch = B, p.kmax = kmax;
    emu::verify_commit(p);
  });
}

// --- the emulator's own knobs and self-test ---------------------------------------------------------

void configure_emu(int64_t num_sms, int64_t seed, const std::string& orders) {
  FLUID_CHECK_VALUE(num_sms >= 1 && num_sms <= 1024, "num_sms: must be in [1, 1024], got ", num_sms);
  std::vector<emu::Order> list;
  size_t start = 0;
  while (start <= orders.size()) {
    size_t comma = orders.find(',', start);
    if (comma == std::string::npos) comma = orders.size();
    const std::string w = orders.substr(start, comma - start);
    if (w == "forward") list.push_back(emu::Order::kForward);
    else if (w == "reverse") list.push_back(emu::Order::kReverse);
    else if (w == "random") list.push_back(emu::Order::kRandom);
    else FLUID_CHECK_VALUE(false, "orders: expected a comma-separated list of forward, reverse, random, got '", orders, "'");
    start = comma + 1;
  }
  emu::Config c = emu::get_config();
  c.num_sms = static_cast<int>(num_sms);
  c.seed = static_cast<uint64_t>(seed);
  emu::set_config(c);
  schedule().orders = list;
}

at::Tensor selftest_emu(const std::string& what, const at::Tensor& x, bool drop_barrier) {
  check_cpu(x, "x");
  check_dtype(x, at::kFloat, "x");
  check_rank(x, 1, "x");
  check_contiguous(x, "x");
  FLUID_CHECK_VALUE(x.numel() >= 1 && x.numel() <= 256, "x: 1 to 256 elements, got ", x.numel());
  FLUID_CHECK_VALUE(what != "warp_sum" || x.numel() % 32 == 0, "x: warp_sum takes whole warps (a multiple of 32)");
  at::Tensor out = at::empty_like(x);
  run_in_orders(("selftest " + what).c_str(), [&](EmuArgs& a) {
    emu::selftest(what.c_str(), static_cast<const float*>(a.in(x, "x")), x.numel(), static_cast<float*>(a.out(out, "out")),
                  drop_barrier);
  });
  return out;
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY(fluid_rt_emu, m) {
  // The schemas of torch.ops.fluid_rt.* (bindings/<family>.cpp).
  m.def(
      "causal_attention(Tensor q, Tensor(a!) k_cache, Tensor(b!) v_cache, Tensor cache_seqlens, Tensor? k=None, "
      "Tensor? v=None, Tensor? cache_batch_idx=None, float? softmax_scale=None) -> (Tensor out, Tensor lse)");
  m.def("token_entropy(Tensor logits, float temperature=1.0) -> (Tensor entropy, Tensor max_prob, "
        "Tensor argmax, Tensor logsumexp)");
  m.def("rms_norm(Tensor(a!) x, Tensor weight, float eps, Tensor? add=None) -> Tensor");
  m.def(
      "draft_commit(Tensor(a!) block, Tensor(b!) step, Tensor(c!) drafting, Tensor pred, Tensor score, "
      "Tensor horizon, Tensor threshold, int mask_token_id, bool score_is_entropy) -> ()");
  m.def(
      "verify_commit(Tensor block, Tensor pred, Tensor horizon, Tensor(a!) verifying, Tensor eos_ids, "
      "Tensor remask, Tensor(b!) out_tokens, Tensor(c!) out_len, Tensor budget, Tensor(d!) done, "
      "Tensor(e!) pending, Tensor(f!) cache_seqlens, Tensor(g!) committed, Tensor(h!) mismatch) -> ()");
  // Emulator knobs: the SM count the planners see, the random order's seed, and the thread orders
  // every launch runs in (comma-separated forward, reverse, random).
  m.def("configure(int num_sms=4, int seed=1, str orders=\"forward,reverse,random\") -> ()", &fluid_rt::configure_emu);
  m.def("selftest(str what, Tensor x, bool drop_barrier=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(fluid_rt_emu, CPU, m) {
  m.impl("causal_attention", &fluid_rt::causal_attention_emu);
  m.impl("token_entropy", &fluid_rt::token_entropy_emu);
  m.impl("rms_norm", &fluid_rt::rms_norm_emu);
  m.impl("draft_commit", &fluid_rt::draft_commit_emu);
  m.impl("verify_commit", &fluid_rt::verify_commit_emu);
  m.impl("selftest", &fluid_rt::selftest_emu);
}
#endif  // FLUID_RT_CUDA_EMU
