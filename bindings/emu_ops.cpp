// torch.ops.fluid_rt_emu.*: the CUDA kernels of csrc/*/cuda_kernels.cuh run on CPU tensors by the
// emulator (csrc/emu), with the schemas of torch.ops.fluid_rt.* (built with FLUID_RT_CUDA_EMU=1, for
// CI; see DEVELOPERS.md). What the bindings add around a launch:
// * every tensor the kernels see is a guarded copy (csrc/emu/guard.h); outputs and workspaces start
//   poisoned (0xFF bytes), so an element the kernels forget reads NaN / -1;
// * the launch runs once per thread order of the schedule (forward, reverse, seeded random by
//   default): results that differ reveal a race or a missing barrier and raise RuntimeError;
// * then the guard zones are checked (an overwritten canary raises), and outputs and in-place
//   arguments are written back.
// Arguments are checked by the families' own code, as for torch.ops.fluid_rt.*: each op is defined
// with its family's schema string and calls describe_<op>() (bindings/<family>.h: the ArgSpec table
// and the op's rules), allocates its outputs as the real impl does, and does what the impl's CUDA
// branch does with the params, on guarded copies. Like that branch, it skips the CPU branch's checks
// of values only the device knows (lengths, indices): the kernels guard them (NaN rows, cleared
// flags), and the tests check that they do.
#ifdef FLUID_RT_CUDA_EMU
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "attention.h"
#include "commit.h"
#include "common.h"
#include "emu/guard.h"
#include "emu/launchers.h"
#include "entropy.h"
#include "norm.h"

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
  // Point `ptr`, which describe_<op>() took from t, at t's guarded copy: input() read-only,
  // inout() written in place (copied back), output() poisoned first (copied back). A null `ptr`
  // (an absent optional or an empty tensor the kernels never read) stays null.
  template <typename T>
  void input(T*& ptr, const at::Tensor& t, const char* name) {
    if (ptr) ptr = static_cast<T*>(in(t, name));
  }
  template <typename T>
  void inout(T*& ptr, const at::Tensor& t, const char* name) {
    if (ptr) ptr = static_cast<T*>(in(t, name, /*write_back=*/true));
  }
  template <typename T>
  void output(T*& ptr, const at::Tensor& t, const char* name) {
    if (ptr) ptr = static_cast<T*>(out(t, name));
  }
  // A poisoned workspace of `bytes` bytes.
  void* scratch(size_t bytes, const char* name) {
    args_.push_back(
        GuardedArg{at::Tensor(), name, false, std::make_unique<emu::GuardedBuffer>(nullptr, bytes, 0)});
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
      if (std::memcmp(args_[i].buf->data(), o.args_[i].buf->data(), args_[i].buf->size()) != 0)
        return args_[i].name;
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
    FLUID_CHECK(where.empty(), op, ": the emulated CUDA kernels give different ", where,
                " when the threads of a ", "block run in ", order_name(schedule().orders[0]), " and in ",
                order_name(schedule().orders[i]), " order: a race on shared memory or a missing barrier");
  }
  if (!runs.empty()) runs[0].write_back();
}

// The emulated ops run on host memory. (The dispatcher only sends CPU tensors to this impl; each
// op's table then requires every argument on the first one's device.)
void check_cpu(const at::Tensor& t, const char* name) {
  FLUID_CHECK(t.is_cpu(), name, ": the emulated CUDA ops (fluid_rt_emu) take CPU tensors, got ", t.device());
}

// --- causal_attention -----------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> causal_attention_emu(const at::Tensor& q, at::Tensor& k_cache,
                                                        at::Tensor& v_cache, const at::Tensor& cache_seqlens,
                                                        const std::optional<at::Tensor>& k,
                                                        const std::optional<at::Tensor>& v,
                                                        const std::optional<at::Tensor>& cache_batch_idx,
                                                        std::optional<double> softmax_scale) {
  check_cpu(q, "q");
  CausalAttentionParams described =
      describe_causal_attention(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale);
  auto outputs = causal_attention_outputs(q, described);
  if (described.batch == 0 || described.seqlen_q == 0 || described.heads_q == 0) return outputs;  // as CUDA
  const at::Tensor out = std::get<0>(outputs), lse = std::get<1>(outputs);
  run_in_orders("causal_attention", [&](EmuArgs& a) {
    CausalAttentionParams p = described;  // sizes, strides and scale; the pointers go to guarded copies
    a.input(p.q, q, "q");
    a.inout(p.k_cache, k_cache, "k_cache");
    a.inout(p.v_cache, v_cache, "v_cache");
    a.input(p.cache_seqlens, cache_seqlens, "cache_seqlens");
    if (k.has_value()) a.input(p.k_new, *k, "k"), a.input(p.v_new, *v, "v");
    if (cache_batch_idx.has_value()) a.input(p.cache_batch_idx, *cache_batch_idx, "cache_batch_idx");
    a.output(p.out, out, "out");
    a.output(p.lse, lse, "lse");
    p.num_splits = emu::causal_attention_num_splits(p);
    if (p.num_splits > 1) {
      const int64_t rows = p.batch * p.seqlen_q * p.heads_q;
      p.partial_out =
          static_cast<float*>(a.scratch(sizeof(float) * p.num_splits * rows * p.head_dim, "partial_out"));
      p.partial_lse = static_cast<float*>(a.scratch(sizeof(float) * p.num_splits * rows, "partial_lse"));
    }
    emu::causal_attention(p);
  });
  return outputs;
}

// --- token_entropy ----------------------------------------------------------------------------------

TokenEntropyOutputs token_entropy_emu(const at::Tensor& logits, double temperature) {
  check_cpu(logits, "logits");
  TokenEntropyParams described = describe_token_entropy(logits, temperature);
  TokenEntropyOutputs outputs = token_entropy_outputs(logits, described);
  if (described.rows == 0) return outputs;  // as on CUDA
  run_in_orders("token_entropy", [&](EmuArgs& a) {
    TokenEntropyParams p = described;
    a.input(p.logits, logits, "logits");
    a.output(p.entropy, std::get<0>(outputs), "entropy");
    a.output(p.max_prob, std::get<1>(outputs), "max_prob");
    a.output(p.argmax, std::get<2>(outputs), "argmax");
    a.output(p.logsumexp, std::get<3>(outputs), "logsumexp");
    const int splits = emu::token_entropy_splits(p.rows, p.vocab);
    void* ws =
        splits > 1 ? a.scratch(emu::token_entropy_workspace_bytes(p.rows, splits), "workspace") : nullptr;
    emu::token_entropy(p, splits, ws);
  });
  return outputs;
}

// --- rms_norm ---------------------------------------------------------------------------------------

at::Tensor rms_norm_emu(const at::Tensor& x, const at::Tensor& weight, double eps,
                        const std::optional<at::Tensor>& add) {
  check_cpu(x, "x");
  RmsNormParams described = describe_rms_norm(x, weight, eps, add);
  at::Tensor out = at::empty_like(x);
  described.out = out.data_ptr();
  if (described.rows == 0) return out;  // no launch for no rows
  run_in_orders("rms_norm", [&](EmuArgs& a) {
    RmsNormParams p = described;
    a.inout(p.x, x, "x");
    a.input(p.weight, weight, "weight");
    if (add.has_value()) a.input(p.add, *add, "add");
    a.output(p.out, out, "out");
    emu::rms_norm(p);
  });
  return out;
}

// --- draft_commit / verify_commit -------------------------------------------------------------------

void draft_commit_emu(const at::Tensor& block, const at::Tensor& step, const at::Tensor& drafting,
                      const at::Tensor& pred, const at::Tensor& score, const at::Tensor& horizon,
                      const at::Tensor& threshold, int64_t mask_token_id, bool score_is_entropy) {
  check_cpu(block, "block");
  const DraftCommitParams described = describe_draft_commit(block, step, drafting, pred, score, horizon,
                                                            threshold, mask_token_id, score_is_entropy);
  if (described.batch == 0) return;
  run_in_orders("draft_commit", [&](EmuArgs& a) {
    DraftCommitParams p = described;
    a.inout(p.block, block, "block");
    a.inout(p.step, step, "step");
    a.inout(p.drafting, drafting, "drafting");
    a.input(p.pred, pred, "pred");
    a.input(p.score, score, "score");
    a.input(p.horizon, horizon, "horizon");
    a.input(p.threshold, threshold, "threshold");
    emu::draft_commit(p);
  });
}

void verify_commit_emu(const at::Tensor& block, const at::Tensor& pred, const at::Tensor& horizon,
                       const at::Tensor& verifying, const at::Tensor& eos_ids, const at::Tensor& remask,
                       const at::Tensor& out_tokens, const at::Tensor& out_len, const at::Tensor& budget,
                       const at::Tensor& done, const at::Tensor& pending, const at::Tensor& cache_seqlens,
                       const at::Tensor& committed, const at::Tensor& mismatch) {
  check_cpu(block, "block");
  const VerifyCommitParams described =
      describe_verify_commit(block, pred, horizon, verifying, eos_ids, remask, out_tokens, out_len, budget,
                             done, pending, cache_seqlens, committed, mismatch);
  if (described.batch == 0) return;
  run_in_orders("verify_commit", [&](EmuArgs& a) {
    VerifyCommitParams p = described;
    a.input(p.block, block, "block");
    a.input(p.pred, pred, "pred");
    a.input(p.horizon, horizon, "horizon");
    a.inout(p.verifying, verifying, "verifying");
    a.input(p.eos_ids, eos_ids, "eos_ids");
    a.input(p.remask, remask, "remask");
    a.inout(p.out_tokens, out_tokens, "out_tokens");
    a.inout(p.out_len, out_len, "out_len");
    a.input(p.budget, budget, "budget");
    a.inout(p.done, done, "done");
    a.inout(p.pending, pending, "pending");
    a.inout(p.cache_seqlens, cache_seqlens, "cache_seqlens");
    a.inout(p.committed, committed, "committed");
    a.inout(p.mismatch, mismatch, "mismatch");
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
    if (w == "forward")
      list.push_back(emu::Order::kForward);
    else if (w == "reverse")
      list.push_back(emu::Order::kReverse);
    else if (w == "random")
      list.push_back(emu::Order::kRandom);
    else
      FLUID_CHECK_VALUE(false, "orders: expected a comma-separated list of forward, reverse, random, got '",
                        orders, "'");
    start = comma + 1;
  }
  emu::Config c = emu::get_config();
  c.num_sms = static_cast<int>(num_sms);
  c.seed = static_cast<uint64_t>(seed);
  emu::set_config(c);
  schedule().orders = list;
}

// The emulator's test kernels take one float32 vector of 1 to 256 elements.
constexpr ArgSpec kSelftestArgs[] = {{"x", kF32, "n>=1", Layout::kContiguous}};
constexpr OpSpec kSelftestSpec{kSelftestArgs, "the emulated CUDA ops (fluid_rt_emu) take CPU tensors"};

at::Tensor selftest_emu(const std::string& what, const at::Tensor& x, bool drop_barrier) {
  check_args(kSelftestSpec, {x});
  FLUID_CHECK_VALUE(x.numel() <= 256, "x: 1 to 256 elements, got ", x.numel());
  FLUID_CHECK_VALUE(what != "warp_sum" || x.numel() % 32 == 0,
                    "x: warp_sum takes whole warps (a multiple of 32)");
  at::Tensor out = at::empty_like(x);
  run_in_orders(("selftest " + what).c_str(), [&](EmuArgs& a) {
    const float* xp = x.data_ptr<float>();
    float* outp = out.data_ptr<float>();
    a.input(xp, x, "x");
    a.output(outp, out, "out");
    emu::selftest(what.c_str(), xp, x.numel(), outp, drop_barrier);
  });
  return out;
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY(fluid_rt_emu, m) {
  // The schemas of torch.ops.fluid_rt.* (bindings/<family>.h).
  m.def(fluid_rt::kCausalAttentionSchema);
  m.def(fluid_rt::kTokenEntropySchema);
  m.def(fluid_rt::kRmsNormSchema);
  m.def(fluid_rt::kDraftCommitSchema);
  m.def(fluid_rt::kVerifyCommitSchema);
  // Emulator knobs: the SM count the planners see, the random order's seed, and the thread orders
  // every launch runs in (comma-separated forward, reverse, random).
  m.def("configure(int num_sms=4, int seed=1, str orders=\"forward,reverse,random\") -> ()",
        &fluid_rt::configure_emu);
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
