// Torch-free check of the CPU kernels against plain double-precision references, for builds where
// the Python tests cannot run (the aarch64 cross build of .ci/cross_aarch64.sh, under qemu). There
// only the portable copies exist, so this checks the portable path. Exit status 0 when every check
// holds; each failure prints one line.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "attention/params.h"
#include "common/cpu_isa.h"
#include "common/dtype.h"
#include "entropy/params.h"
#include "lora/params.h"
#include "norm/params.h"
#include "quant/params.h"
#include "rope/params.h"

using namespace fluid_rt;

namespace {

int failures = 0;
std::mt19937 rng(1234);

void expect(bool ok, const char* what, double got, double want) {
  if (!ok) {
    std::printf("FAIL %s: got %.9g, want %.9g\n", what, got, want);
    ++failures;
  }
}

void expect_close(const char* what, double got, double want, double rtol, double atol) {
  expect(std::fabs(got - want) <= atol + rtol * std::fabs(want), what, got, want);
}

std::vector<float> randn(size_t n, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

// ---- token_entropy ---------------------------------------------------------------------------
void check_entropy(int64_t rows, int64_t V, DType dt) {
  std::vector<float> x = randn(rows * V, 3.f);
  std::vector<uint16_t> h(rows * V);
  if (dt == DType::kBFloat16)
    for (size_t i = 0; i < x.size(); ++i) h[i] = float_to_bf16(x[i]), x[i] = bf16_to_float(h[i]);
  x[V / 2] = 9.f;  // row 0: a clear maximum in the middle
  if (dt == DType::kBFloat16) h[V / 2] = float_to_bf16(9.f);
  std::vector<float> ent(rows), mp(rows), lse(rows);
  std::vector<int64_t> am(rows);
  TokenEntropyParams p;
  p.logits = dt == DType::kFloat32 ? static_cast<const void*>(x.data()) : h.data();
  p.dtype = dt, p.rows = rows, p.vocab = V, p.row_stride = V, p.inv_temperature = 1.f / 0.7f;
  p.entropy = ent.data(), p.max_prob = mp.data(), p.argmax = am.data(), p.logsumexp = lse.data();
  token_entropy_cpu(p);
  for (int64_t r = 0; r < rows; ++r) {
    const float* row = x.data() + r * V;
    double m = -1e300;
    int64_t arg = 0;
    for (int64_t i = 0; i < V; ++i)
      if (row[i] > m) m = row[i], arg = i;
    double s = 0, t = 0;
    for (int64_t i = 0; i < V; ++i) {
      const double d = (row[i] - m) / 0.7;
      s += std::exp(d), t += d * std::exp(d);
    }
    expect_close("entropy", ent[r], std::log(s) - t / s, 1e-5, 2e-6);
    expect_close("entropy max_prob", mp[r], 1 / s, 1e-5, 1e-7);
    expect_close("entropy logsumexp", lse[r], m / 0.7 + std::log(s), 1e-5, 2e-6);
    expect(am[r] == arg, "entropy argmax", static_cast<double>(am[r]), static_cast<double>(arg));
  }
}

void check_entropy_nonfinite() {
  const int64_t V = 1001;
  std::vector<float> x = randn(2 * V, 1.f);
  x[300] = std::numeric_limits<float>::quiet_NaN();                 // row 0: NaN wins
  x[V + 17] = x[V + 900] = std::numeric_limits<float>::infinity();  // row 1: two +inf
  std::vector<float> ent(2), mp(2), lse(2);
  std::vector<int64_t> am(2);
  TokenEntropyParams p;
  p.logits = x.data(), p.rows = 2, p.vocab = V, p.row_stride = V;
  p.entropy = ent.data(), p.max_prob = mp.data(), p.argmax = am.data(), p.logsumexp = lse.data();
  token_entropy_cpu(p);
  expect(std::isnan(ent[0]) && am[0] == 300, "entropy NaN row", ent[0], NAN);
  expect_close("entropy +inf row", ent[1], std::log(2.0), 1e-6, 0);
  expect(am[1] == 17 && mp[1] == 0.5f && std::isinf(lse[1]), "entropy +inf row argmax", am[1], 17);
}

// ---- rms_norm -------------------------------------------------------------------------------
void check_norm(int64_t rows, int64_t H) {
  std::vector<float> x = randn(rows * H, 2.f), add = randn(rows * H, 1.f), w = randn(H, 1.f), out(rows * H);
  const std::vector<float> x0 = x;
  RmsNormParams p;
  p.x = x.data(), p.add = add.data(), p.add_row_stride = H, p.weight = w.data(), p.out = out.data();
  p.rows = rows, p.hidden = H, p.eps = 1e-5f;
  rms_norm_cpu(p);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < H; ++i) {
      const float sum = x0[r * H + i] + add[r * H + i];
      expect(x[r * H + i] == sum, "rms_norm residual sum", x[r * H + i], sum);
      ss += static_cast<double>(sum) * sum;
    }
    const double inv = 1 / std::sqrt(ss / H + 1e-5);
    for (int64_t i = 0; i < H; ++i)
      expect_close("rms_norm out", out[r * H + i], w[i] * (x[r * H + i] * inv), 1e-5, 1e-5);
  }
}

// ---- rope -----------------------------------------------------------------------------------
void check_rope(int64_t rows, int64_t heads, int64_t D) {
  std::vector<float> x = randn(rows * heads * D, 2.f), c = randn(rows * D, 1.f), s = randn(rows * D, 1.f);
  const std::vector<float> x0 = x;
  RopeParams p;
  p.x = x.data(), p.row_stride = heads * D, p.cos = c.data(), p.sin = s.data();
  p.rows = rows, p.heads = heads, p.head_dim = D;
  rope_cpu(p);
  const int64_t half = D / 2;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t d = 0; d < D; ++d) {
        const int64_t i = (r * heads + h) * D + d, j = (r * heads + h) * D + (d < half ? d + half : d - half);
        // separately rounded products and sum (this file is compiled with -ffp-contract=off)
        const float a = x0[i] * c[r * D + d], b = x0[j] * s[r * D + d];
        expect(x[i] == a + b, "rope (bitwise)", x[i], a + b);
      }
}

// ---- causal_attention -----------------------------------------------------------------------
void check_attention(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, int64_t S,
                     std::vector<int32_t> seqlens) {
  std::vector<float> q = randn(B * T * Hq * D, 1.f), kc = randn(B * S * Hkv * D, 1.f),
                     vc = randn(B * S * Hkv * D, 1.f);
  std::vector<float> out(B * T * Hq * D), lse(B * T * Hq);
  CausalAttentionParams p;
  p.q = q.data(), p.q_stride_b = T * Hq * D, p.q_stride_t = Hq * D, p.q_stride_h = D;
  p.k_cache = kc.data(), p.v_cache = vc.data(), p.cache_seqlens = seqlens.data();
  p.out = out.data(), p.lse = lse.data();
  p.batch = B, p.seqlen_q = T, p.heads_q = Hq, p.heads_kv = Hkv, p.head_dim = D, p.cache_batch = B,
  p.cache_len = S;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(D));
  causal_attention_cpu(p);
  const int64_t G = Hq / Hkv;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t L = seqlens[b] + t + 1;
        std::vector<double> sc(L);
        double m = -1e300, sum = 0;
        for (int64_t j = 0; j < L; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d)
            dot += static_cast<double>(q[((b * T + t) * Hq + h) * D + d]) *
                   kc[((b * S + j) * Hkv + h / G) * D + d];
          sc[j] = dot * p.softmax_scale;
          m = std::max(m, sc[j]);
        }
        for (int64_t j = 0; j < L; ++j) sum += std::exp(sc[j] - m);
        expect_close("attention lse", lse[(b * T + t) * Hq + h], m + std::log(sum), 1e-5, 1e-5);
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (int64_t j = 0; j < L; ++j)
            o += std::exp(sc[j] - m) / sum * vc[((b * S + j) * Hkv + h / G) * D + d];
          expect_close("attention out", out[((b * T + t) * Hq + h) * D + d], o, 1e-4, 1e-5);
        }
      }
}

}  // namespace

// ---- quant_linear -----------------------------------------------------------------------------
// Random integer quants and scales packed by quant_pack_cpu; rows quantized as the kernel's contract
// says (csrc/quant/params.h) and multiplied in double against the unpacked weight.
void check_quant_linear(QuantFormat f, int64_t M, int64_t N, int64_t K) {
  const int64_t nb = K / kQuantBlock, spb = quant_scales_per_block(f);
  std::uniform_int_distribution<int> u4(0, 15), s8(-128, 127);
  std::vector<uint8_t> q(N * K);
  for (auto& v : q) v = static_cast<uint8_t>(quant_is_u4(f) ? u4(rng) : s8(rng));
  std::vector<float> d(N * nb * spb), m(N * nb);
  for (auto& v : d) v = fp16_to_float(float_to_fp16(std::fabs(randn(1, 0.01f)[0])));  // exact in float16
  for (auto& v : m) v = fp16_to_float(float_to_fp16(randn(1, 0.05f)[0]));
  std::vector<uint8_t> packed(quant_num_groups(N) * nb * quant_block_bytes(f));
  QuantPackParams pp;
  pp.q = q.data(), pp.d = d.data(), pp.m = quant_has_min(f) ? m.data() : nullptr;
  pp.packed = packed.data(), pp.format = f, pp.N = N, pp.K = K;
  expect(quant_pack_cpu(pp) == -1, "quant_pack exact scales", 0, -1);
  const std::vector<float> x = randn(M * K, 1.f);
  std::vector<float> y(M * N, std::numeric_limits<float>::quiet_NaN());  // poisoned
  QuantLinearParams p;
  p.x = x.data(), p.x_row_stride = K, p.packed = packed.data(), p.format = f, p.y = y.data();
  p.y_row_stride = N, p.M = M, p.K = K, p.N = N;
  quant_linear_cpu(p);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t n = 0; n < N; ++n) {
      double want = 0, scale = 0;
      for (int64_t b = 0; b < nb; ++b) {
        float amax = 0;
        for (int64_t i = 0; i < kQuantBlock; ++i)
          amax = std::fmax(amax, std::fabs(x[r * K + b * kQuantBlock + i]));
        const double dx = amax / 127.f;
        for (int64_t i = 0; i < kQuantBlock; ++i) {
          const int64_t k = b * kQuantBlock + i;
          const double xq = std::nearbyint(x[r * K + k] * (127.f / amax));
          const double qv = quant_is_u4(f) ? q[n * K + k] : static_cast<int8_t>(q[n * K + k]);
          const double w =
              d[(n * nb + b) * spb + i * spb / kQuantBlock] * qv + (quant_has_min(f) ? m[n * nb + b] : 0.0);
          want += dx * xq * w;
          scale += std::fabs(dx * xq * w);
        }
      }
      expect_close("quant_linear", y[r * N + n], want, 0, (nb + 4) * 0x1p-23 * scale);
    }
}

// ---- gated_lora_ -----------------------------------------------------------------------------
// part_ends: a fused projection's parts (b_t [rank / parts, out]), or empty for one part.
void check_gated_lora(int64_t n, int64_t in, int64_t rank, int64_t out, bool silu_and_mul,
                      const std::vector<int64_t>& part_ends = {}) {
  const int64_t xin = silu_and_mul ? 2 * in : in;
  std::vector<float> x = randn(n * xin, 1.f), y = randn(n * out, 1.f);
  const int64_t parts = part_ends.empty() ? 1 : static_cast<int64_t>(part_ends.size()),
                part_rank = rank / parts;
  const std::vector<float> a = randn(in * rank, 0.2f), b = randn(part_rank * out, 0.2f), y0 = y;
  const std::vector<int64_t> rows = {n - 1, 0};  // out of order; the rows between stay untouched
  GatedLoraParams p;
  p.y = y.data(), p.y_stride = out, p.x = x.data(), p.x_stride = xin, p.rows = rows.data();
  p.num_rows = static_cast<int64_t>(rows.size()), p.a_t = a.data();
  p.in = in, p.rank = rank, p.out = out, p.silu_and_mul = silu_and_mul;
  if (!part_ends.empty()) p.part_ends = part_ends.data(), p.num_parts = parts;
  // b_t in pieces of kLoraPiece columns per part, each piece's rows together, zero-padded.
  std::vector<float> pieces;
  for (int64_t q = 0; q < parts; ++q) {
    const int64_t c0 = lora_part_begin(p, q), c1 = lora_part_end(p, q);
    for (int64_t p0 = c0; p0 < c1; p0 += kLoraPiece)
      for (int64_t k = 0; k < part_rank; ++k)
        for (int64_t j = 0; j < kLoraPiece; ++j) pieces.push_back(p0 + j < c1 ? b[k * out + p0 + j] : 0.f);
  }
  p.b_t = pieces.data();
  // Output o of part q takes rank slice q of h: b holds the fused B's diagonal blocks side by side.
  auto part_of_column = [&](int64_t o) {
    int64_t q = 0;
    while (!part_ends.empty() && o >= part_ends[q]) ++q;
    return q;
  };
  gated_lora_cpu(p);
  for (int64_t r = 0; r < n; ++r) {
    const bool listed = r == 0 || r == n - 1;
    std::vector<double> h(rank, 0.0);
    for (int64_t i = 0; i < in; ++i) {
      double v = x[r * xin + i];
      if (silu_and_mul) v = v / (1 + std::exp(-v)) * x[r * xin + in + i];
      for (int64_t k = 0; k < rank; ++k) h[k] += v * a[i * rank + k];
    }
    for (int64_t o = 0; o < out; ++o) {
      double want = y0[r * out + o];
      const int64_t q = part_of_column(o);
      for (int64_t k = 0; listed && k < part_rank; ++k) want += h[q * part_rank + k] * b[k * out + o];
      if (listed)
        expect_close("gated_lora row", y[r * out + o], want, 1e-5, 1e-5);
      else
        expect(y[r * out + o] == y0[r * out + o], "gated_lora untouched row", y[r * out + o], want);
    }
  }
}

int main() {
  std::printf("CPU path %s\n", cpu_isa_name(cpu_isa()));
  check_entropy(3, 4099, DType::kFloat32);
  check_entropy(2, 70001, DType::kBFloat16);
  check_entropy(2, 7, DType::kFloat32);
  check_entropy_nonfinite();
  check_norm(3, 576);
  check_norm(2, 203);
  check_rope(5, 3, 128);
  check_rope(2, 2, 20);
  check_attention(2, 5, 8, 2, 64, 600, {0, 300});  // keys across the 256-key chunks
  check_attention(1, 3, 6, 1, 80, 40, {7});
  check_attention(1, 1, 4, 4, 16, 600, {550});  // one query: the split-KV path
  check_gated_lora(3, 576, 48, 960, false);
  check_gated_lora(4, 37, 5, 23, true);
  check_gated_lora(6, 40, 6, 29, false, {10, 17, 29});
  for (const QuantFormat f :
       {QuantFormat::kU4F16, QuantFormat::kU4F32, QuantFormat::kS8F16, QuantFormat::kS8F32x2})
    check_quant_linear(f, 5, 13, 96);
  std::printf(failures ? "%d check(s) failed\n" : "all checks passed\n", failures);
  return failures ? 1 : 0;
}
