// rms_norm's row kernel, compiled once per CPU path (csrc/common/vec.h): one pass to add and
// square-sum, one to scale, kLanes elements per vector, the tail through a partial vector. Float32
// math, rounding to x's dtype exactly where torch does: the residual sum, the normed value, the output.
#include <cmath>
#include <type_traits>

#include "common/vec.h"
#include "norm/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

template <DType D>
void norm_row(const RmsNormParams& p, int64_t r) {
  using T = std::conditional_t<D == DType::kFloat32, float, uint16_t>;
  const int64_t H = p.hidden;
  T* x = static_cast<T*>(p.x) + r * H;
  const T* add = p.add ? static_cast<const T*>(p.add) + r * p.add_row_stride : nullptr;
  T* out = static_cast<T*>(p.out) + r * H;
  VecF acc = vzero();
  for (int64_t i = 0; i < H; i += kLanes) {
    const int64_t n = H - i < kLanes ? H - i : kLanes;
    VecF v = load_n<D>(x, i, n);
    if (add) {
      v = round_as<D>(v + load_n<D>(add, i, n));  // torch's add: the sum rounded to x's dtype
      store_n<D>(x, i, v, n);
    }
    acc = fma(v, v, acc);
  }
  const VecF inv = vset1(1.f / std::sqrt(reduce_add(acc) / static_cast<float>(H) + p.eps));
  for (int64_t i = 0; i < H; i += kLanes) {
    const int64_t n = H - i < kLanes ? H - i : kLanes;
    const VecF normed = round_as<D>(load_n<D>(x, i, n) * inv);
    store_n<D>(out, i, load_n<D>(p.weight, i, n) * normed, n);
  }
}

}  // namespace

void rms_norm_rows(const RmsNormParams& p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    switch (p.dtype) {
      case DType::kFloat32: norm_row<DType::kFloat32>(p, r); break;
      case DType::kBFloat16: norm_row<DType::kBFloat16>(p, r); break;
      default: norm_row<DType::kFloat16>(p, r); break;
    }
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
