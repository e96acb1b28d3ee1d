// gated_lora_'s row kernel, compiled once per CPU path (csrc/common/vec.h). Both products are a
// vector times a row-major matrix, out[0 .. n) = sum_k v[k] * w[k][0 .. n): kLanes outputs per
// vector, up to kBlock vectors of them accumulated in registers while k runs, so each matrix is
// read once per row and no horizontal sums are needed.
#include <algorithm>
#include <vector>

#include "common/vexp.h"
#include "lora/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

constexpr int kBlock = 4;  // output vectors per pass over k

// out[0 .. NV kLanes) of v @ w, the last vector holding `tail` (<= kLanes) outputs.
template <int NV>
void vec_mat_block(const float* v, int64_t k, const float* w, int64_t n, float* out, int64_t tail) {
  VecF acc[NV];
  for (int b = 0; b < NV; ++b) acc[b] = vzero();
  const bool full = tail == kLanes;  // loop-invariant: the compiler unswitches it
  for (int64_t i = 0; i < k; ++i) {
    const VecF vi = vset1(v[i]);
    const float* row = w + i * n;
    for (int b = 0; b < NV - 1; ++b) acc[b] = fma(vi, vload(row + b * kLanes), acc[b]);
    const float* last = row + (NV - 1) * kLanes;
    acc[NV - 1] = fma(vi, full ? vload(last) : vload_first(last, tail), acc[NV - 1]);
  }
  for (int b = 0; b < NV - 1; ++b) vstore(out + b * kLanes, acc[b]);
  vstore_first(out + (NV - 1) * kLanes, acc[NV - 1], tail);
}

// out[0 .. n) = v[0 .. k) @ w[k][n] (row stride n).
void vec_mat(const float* v, int64_t k, const float* w, int64_t n, float* out) {
  for (int64_t j0 = 0; j0 < n; j0 += kBlock * kLanes) {
    const int64_t width = std::min<int64_t>(kBlock * kLanes, n - j0);
    const int nv = static_cast<int>((width + kLanes - 1) / kLanes);
    const int64_t tail = width - (nv - 1) * kLanes;
    switch (nv) {
      case 1: vec_mat_block<1>(v, k, w + j0, n, out + j0, tail); break;
      case 2: vec_mat_block<2>(v, k, w + j0, n, out + j0, tail); break;
      case 3: vec_mat_block<3>(v, k, w + j0, n, out + j0, tail); break;
      default: vec_mat_block<kBlock>(v, k, w + j0, n, out + j0, tail); break;
    }
  }
}

// silu(g) * u, silu(g) = g * sigmoid(g), sigmoid from e = exp(-|g|) (never overflows).
inline VecF silu_times(VecF g, VecF u) {
  const MaskF pos = g > vzero();
  const VecF e = exp_nonpositive(vmax(select(pos, vzero() - g, g), vset1(kExpFlushBelow)));
  const VecF one = vset1(1.0f);
  const VecF sig = select(pos, one / (one + e), e / (one + e));
  return g * sig * u;
}

// x' of one row, widened to float32 into xf [in].
template <DType D>
void input_row(const GatedLoraParams& p, const void* x, float* xf) {
  for (int64_t i = 0; i < p.in; i += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, p.in - i);
    const VecF a = load_n<D>(x, i, n);
    store_n<DType::kFloat32>(xf, i, p.silu_and_mul ? silu_times(a, load_n<D>(x, p.in + i, n)) : a, n);
  }
}

template <DType D>
void lora_row(const GatedLoraParams& p, int64_t r, float* scratch) {
  float *xf = scratch, *h = xf + p.in, *d = h + p.rank;
  const int64_t es = D == DType::kFloat32 ? 4 : 2;
  const char* x = static_cast<const char*>(p.x) + r * p.x_stride * es;
  char* y = static_cast<char*>(p.y) + r * p.y_stride * es;
  input_row<D>(p, x, xf);
  vec_mat(xf, p.in, p.a_t, p.rank, h);
  vec_mat(h, p.rank, p.b_t, p.out, d);
  for (int64_t j = 0; j < p.out; j += kLanes) {
    const int64_t n = std::min<int64_t>(kLanes, p.out - j);
    store_n<D>(y, j, load_n<D>(y, j, n) + load_n<DType::kFloat32>(d, j, n), n);
  }
}

}  // namespace

void gated_lora_rows(const GatedLoraParams& p, int64_t r0, int64_t r1) {
  std::vector<float> scratch(static_cast<size_t>(p.in + p.rank + p.out));
  for (int64_t i = r0; i < r1; ++i) {
    if (p.dtype == DType::kFloat32)
      lora_row<DType::kFloat32>(p, p.rows[i], scratch.data());
    else
      lora_row<DType::kBFloat16>(p, p.rows[i], scratch.data());
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
