// decoder_layer_: one Llama-family decoder layer of the CPU forward on quantized weights, as one op
// call. It runs the same impls the model's Python layer calls one by one (rms_norm, quant_linear with
// the adapter's LoRA, rope_, causal_attention), in the same order on the same tensors, so its
// results are bitwise those of the eight calls. What it saves is their dispatch: a decode step makes
// eight op calls per layer (~240 for SmolLM2's 30), each a few microseconds of Python and dispatcher
// work around a kernel that itself takes microseconds.
//
// Every argument is checked before anything is written, so a bad call leaves x and the caches as they
// were. The projections then run on those checks (quant_linear_output, the LoRA's params described
// once): checking each again cost ~15 us of host time per layer with mask rows. The norms, RoPE and
// attention impls check again, cheaply.
#include <ATen/ops/empty.h>

#include <optional>
#include <vector>

#include "attention.h"
#include "common.h"
#include "lora.h"
#include "norm.h"
#include "quant.h"
#include "quant/params.h"
#include "rope.h"

namespace fluid_rt {
namespace {

constexpr char kLayerSchema[] =
    "decoder_layer_(Tensor(a!) x, Tensor? delta, Tensor ln_in, Tensor ln_post, float eps, Tensor[] weights, "
    "int[] formats, int[] out_features, Tensor?[] biases, Tensor cos, Tensor sin, Tensor(b!) k_cache, "
    "Tensor(c!) v_cache, Tensor cache_seqlens, Tensor? cache_batch_idx, int heads_q, int heads_kv, "
    "Tensor? lora_rows, Tensor[] lora_a_t, Tensor[] lora_b) -> Tensor";

constexpr char kCpuOnly[] = "decoder_layer_ is the CPU forward's layer on quantized weights";
constexpr uint32_t kActivation = kOpFloat | kF32 | kBF16;

constexpr ArgSpec kLayerArgs[] = {
    {"x", kActivation, "batch tokens hidden>=1", Layout::kContiguous, kWritten},
    {"delta", kActivation, "batch tokens hidden", Layout::kContiguous, kOptional},
    {"ln_in", kActivation, "hidden", Layout::kContiguous},
    {"ln_post", kActivation, "hidden", Layout::kContiguous},
    {"cos", kActivation, "batch tokens head_dim", Layout::kContiguous},
    {"sin", kActivation, "batch tokens head_dim", Layout::kContiguous},
    // Listed so that none of them shares memory with x (written first): attention reads them later.
    {"k_cache", kActivation, "cache_rows cache_len heads_kv head_dim", Layout::kContiguous, kWritten},
    {"v_cache", kActivation, "cache_rows cache_len heads_kv head_dim", Layout::kContiguous, kWritten},
    {"cache_seqlens", kI32, "batch", Layout::kContiguous},
    {"cache_batch_idx", kI32, "batch", Layout::kContiguous, kOptional},
    {"lora_rows", kI64, "mask_rows", Layout::kContiguous, kOptional},
};
constexpr OpSpec kLayerSpec{kLayerArgs, kCpuOnly};

enum Proj { kQkv = 0, kO = 1, kGateUp = 2, kDown = 3, kProjs = 4 };
constexpr const char* kProjNames[kProjs] = {"qkv", "o", "gate_up", "down"};

// The layer's dimensions, from x, heads_q, heads_kv and the projections' out_features.
struct Dims {
  int64_t batch, tokens, hidden, heads_q, heads_kv, head_dim, inter;
  int64_t in_features(int i) const { return i == kO ? heads_q * head_dim : i == kDown ? inter : hidden; }
  // Each projection's parts, as the adapter's LoRA B is split (its out_parts).
  std::vector<int64_t> parts(int i) const {
    switch (i) {
      case kQkv: return {heads_q * head_dim, heads_kv * head_dim, heads_kv * head_dim};
      case kGateUp: return {inter, inter};
      default: return {hidden};
    }
  }
};

Dims layer_dims(const at::Tensor& x, at::IntArrayRef out_features, int64_t heads_q, int64_t heads_kv) {
  FLUID_CHECK_VALUE(out_features.size() == kProjs, "out_features: expected 4 (qkv, o, gate_up, down), got ",
                    out_features.size());
  for (const int64_t n : out_features)
    FLUID_CHECK_VALUE(n >= 1, "out_features: expected positive sizes, got ", out_features);
  FLUID_CHECK_VALUE(
      heads_kv >= 1 && heads_q >= heads_kv && heads_q % heads_kv == 0 && heads_q <= out_features[kQkv],
      "heads_q, heads_kv: expected heads_kv >= 1 dividing heads_q <= qkv's out_features, got ", heads_q, ", ",
      heads_kv);
  const int64_t heads = heads_q + 2 * heads_kv;
  FLUID_CHECK_VALUE(out_features[kQkv] % heads == 0, "out_features: qkv's ", out_features[kQkv],
                    " is not (heads_q + 2 heads_kv) = ", heads, " heads");
  Dims d{x.size(0),
         x.size(1),
         x.size(2),
         heads_q,
         heads_kv,
         out_features[kQkv] / heads,
         out_features[kGateUp] / 2};
  FLUID_CHECK_VALUE(
      out_features[kGateUp] % 2 == 0 && out_features[kO] == d.hidden && out_features[kDown] == d.hidden,
      "out_features: expected [qkv, hidden, 2 * inter, hidden] with hidden ", d.hidden, " (x dim 2), got ",
      out_features);
  return d;
}

// Each packed weight's shape and format against its projection's in/out features, and its bias.
void check_projections(const Dims& d, at::TensorList weights, at::IntArrayRef formats,
                       at::IntArrayRef out_features, const c10::List<std::optional<at::Tensor>>& biases,
                       const at::Tensor& x) {
  FLUID_CHECK_VALUE(weights.size() == kProjs && formats.size() == kProjs && biases.size() == kProjs,
                    "weights, formats, biases: expected 4 each (qkv, o, gate_up, down), got ", weights.size(),
                    ", ", formats.size(), ", ", biases.size());
  for (int i = 0; i < kProjs; ++i) {
    const at::Tensor& w = weights[i];
    FLUID_CHECK_VALUE(formats[i] >= 0 && formats[i] < kNumQuantFormats, "formats: ", kProjNames[i], "'s ",
                      formats[i], " is not a quant format (0 .. 3)");
    const auto f = static_cast<QuantFormat>(formats[i]);
    FLUID_CHECK(w.is_cpu(), "weights: ", kProjNames[i], " is on ", w.device().str(), "; ", kCpuOnly);
    FLUID_CHECK_VALUE(w.scalar_type() == at::kByte && w.dim() == 3 && w.is_contiguous() &&
                          w.size(0) == quant_num_groups(out_features[i]) &&
                          w.size(1) * kQuantBlock == d.in_features(i) && w.size(2) == quant_block_bytes(f),
                      "weights: ", kProjNames[i], " expected a contiguous uint8 [",
                      quant_num_groups(out_features[i]), ", ", d.in_features(i) / kQuantBlock, ", ",
                      quant_block_bytes(f), "] packed weight, got ", w.scalar_type(), " ", w.sizes());
    const std::optional<at::Tensor> bias = biases.get(i);
    if (!bias.has_value()) continue;
    FLUID_CHECK_VALUE(bias->scalar_type() == x.scalar_type() && bias->is_cpu() && bias->dim() == 1 &&
                          bias->size(0) == out_features[i] && bias->is_contiguous(),
                      "biases: ", kProjNames[i], " expected a contiguous ", x.scalar_type(), " [",
                      out_features[i], "] CPU tensor, got ", bias->scalar_type(), " ", bias->sizes());
  }
}

// The adapter's LoRA of each projection, described once: its params (the input and output pointers
// are set per call) and the parts' ends they point into. Empty without mask rows.
struct LayerLora {
  bool active = false;
  GatedLoraParams params[kProjs];
  std::vector<int64_t> ends[kProjs];
};

// The adapter's factors and rows, by gated_lora_'s own rules (describe_lora_factors), for each
// projection's row count and widths, so that a bad factor is reported before x is touched.
void check_lora(const Dims& d, const at::Tensor& x, at::IntArrayRef out_features,
                const std::optional<at::Tensor>& rows, at::TensorList a_t, at::TensorList b_t,
                LayerLora& lora) {
  FLUID_CHECK_VALUE(a_t.size() == b_t.size() && (a_t.empty() || a_t.size() == kProjs),
                    "lora_a_t, lora_b: expected 4 each (qkv, o, gate_up, down) or none, got ", a_t.size(),
                    ", ", b_t.size());
  FLUID_CHECK_VALUE(!rows.has_value() || !a_t.empty(), "lora_rows: given without lora_a_t / lora_b");
  if (!rows.has_value() || rows->numel() == 0) return;
  const int64_t n = d.batch * d.tokens;
  for (int i = 0; i < kProjs; ++i) {
    const std::vector<int64_t> parts = d.parts(i);
    lora.params[i] = describe_lora_factors(n, d.in_features(i), out_features[i], x.scalar_type(), *rows,
                                           a_t[i], b_t[i], i == kDown, parts, lora.ends[i]);
  }
  lora.active = true;
}

// What causal_attention will be given, checked now, values included. q, k and v will be views of
// the qkv projection, which does not exist yet: here views of one head_dim row with zero strides
// elsewhere (their dtype and shape are what the checks read), so no buffer is allocated.
void check_attention(const Dims& d, const at::Tensor& x, at::Tensor& k_cache, at::Tensor& v_cache,
                     const at::Tensor& seqlens, const std::optional<at::Tensor>& batch_idx) {
  const at::Tensor row = at::empty({d.head_dim}, x.options());
  auto heads = [&](int64_t h) { return row.as_strided({d.batch, d.tokens, h, d.head_dim}, {0, 0, 0, 1}); };
  check_attention_host_values(describe_causal_attention(heads(d.heads_q), k_cache, v_cache, seqlens,
                                                        heads(d.heads_kv), heads(d.heads_kv), batch_idx,
                                                        std::nullopt));
}

// The four projections of one call (checked up front), each with the adapter's LoRA delta when
// lora is active.
struct Projections {
  const Dims& d;
  at::TensorList weights;
  at::IntArrayRef formats, out_features;
  const c10::List<std::optional<at::Tensor>>& biases;
  const LayerLora& lora;

  at::Tensor operator()(int i, const at::Tensor& in) const {
    QuantLinearParams p;
    const at::Tensor y = quant_linear_output(in, weights[i], static_cast<QuantFormat>(formats[i]),
                                             d.in_features(i), out_features[i], biases.get(i), i == kDown, p);
    quant_linear_cpu(p);
    if (lora.active) {
      GatedLoraParams lp = lora.params[i];
      lp.y = y.data_ptr();
      lp.y_stride = row_stride(y);
      lp.x = in.data_ptr();
      lp.x_stride = row_stride(in);
      gated_lora_cpu(lp);
    }
    return y;
  }
};

at::Tensor decoder_layer_impl(at::Tensor& x, const std::optional<at::Tensor>& delta, const at::Tensor& ln_in,
                              const at::Tensor& ln_post, double eps, at::TensorList weights,
                              at::IntArrayRef formats, at::IntArrayRef out_features,
                              const c10::List<std::optional<at::Tensor>>& biases, const at::Tensor& cos,
                              const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache,
                              const at::Tensor& cache_seqlens,
                              const std::optional<at::Tensor>& cache_batch_idx, int64_t heads_q,
                              int64_t heads_kv, const std::optional<at::Tensor>& lora_rows,
                              at::TensorList lora_a_t, at::TensorList lora_b) {
  check_args(kLayerSpec, {x, delta, ln_in, ln_post, cos, sin, k_cache, v_cache, cache_seqlens,
                          cache_batch_idx, lora_rows});
  const Dims d = layer_dims(x, out_features, heads_q, heads_kv);
  FLUID_CHECK_VALUE(cos.size(2) == d.head_dim, "cos: expected head_dim ", d.head_dim, " (last dim), got ",
                    cos.sizes());
  check_projections(d, weights, formats, out_features, biases, x);
  LayerLora lora;
  check_lora(d, x, out_features, lora_rows, lora_a_t, lora_b, lora);
  check_attention(d, x, k_cache, v_cache, cache_seqlens, cache_batch_idx);
  const Projections project{d, weights, formats, out_features, biases, lora};

  // Attention: norm (adding the previous layer's output into x), q/k/v, RoPE on q and k, attention.
  const at::Tensor h = rms_norm_impl(x, ln_in, eps, delta);
  const at::Tensor heads = project(kQkv, h).view({d.batch, d.tokens, d.heads_q + 2 * d.heads_kv, d.head_dim});
  at::Tensor qk = heads.narrow(2, 0, d.heads_q + d.heads_kv);
  rope_impl(qk, cos, sin);
  const at::Tensor attn = std::get<0>(causal_attention_impl(
      qk.narrow(2, 0, d.heads_q), k_cache, v_cache, cache_seqlens, qk.narrow(2, d.heads_q, d.heads_kv),
      heads.narrow(2, d.heads_q + d.heads_kv, d.heads_kv), cache_batch_idx, std::nullopt));
  const at::Tensor o = project(kO, attn.view({d.batch, d.tokens, d.heads_q * d.head_dim}));
  // MLP: norm (adding the attention output into x), gate/up, silu(gate) * up, down.
  const at::Tensor h2 = rms_norm_impl(x, ln_post, eps, o);
  return project(kDown, project(kGateUp, h2));
}

}  // namespace
}  // namespace fluid_rt

TORCH_LIBRARY_FRAGMENT(fluid_rt, m) { m.def(fluid_rt::kLayerSchema); }

TORCH_LIBRARY_IMPL(fluid_rt, CPU, m) { m.impl("decoder_layer_", &fluid_rt::decoder_layer_impl); }
