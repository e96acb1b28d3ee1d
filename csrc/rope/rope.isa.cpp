// rope's row kernel, compiled once per CPU path (csrc/common/vec.h) and, like every copy, without
// FMA contraction (CMakeLists.txt sets -ffp-contract=off on this file): each product and the sum
// are rounded to x's dtype, so the result is HF's bit for bit on every path.
#include <algorithm>
#include <type_traits>

#include "common/vec.h"
#include "rope/params.h"

namespace fluid_rt {
namespace FLUID_RT_ISA_NS {
namespace {

// Elements [d, d + n) of both halves of one head (n <= kLanes): both are read before either is
// written, so the rotation is in place without a copy of the head.
template <DType D>
inline void rotate(void* x, const void* cos, const void* sin, int64_t half, int64_t d, int64_t n) {
  auto load = [n](const void* base, int64_t i) {
    return n == kLanes ? load_as<D>(base, i) : load_first_as<D>(base, i, n);
  };
  const VecF lo = load(x, d), hi = load(x, d + half);
  const VecF new_lo = round_as<D>(lo * load(cos, d)) + round_as<D>(hi * load(sin, d));
  const VecF new_hi = round_as<D>(hi * load(cos, d + half)) + round_as<D>(lo * load(sin, d + half));
  if (n == kLanes) {
    store_as<D>(x, d, new_lo);
    store_as<D>(x, d + half, new_hi);
  } else {
    store_first_as<D>(x, d, new_lo, n);
    store_first_as<D>(x, d + half, new_hi, n);
  }
}

template <DType D>
void rope_row(const RopeParams& p, int64_t r) {
  using T = std::conditional_t<D == DType::kFloat32, float, uint16_t>;
  const int64_t hd = p.head_dim, half = hd / 2;
  const T* cos = static_cast<const T*>(p.cos) + r * hd;
  const T* sin = static_cast<const T*>(p.sin) + r * hd;
  for (int64_t h = 0; h < p.heads; ++h) {
    T* x = static_cast<T*>(p.x) + r * p.row_stride + h * hd;
    for (int64_t d = 0; d < half; d += kLanes)
      rotate<D>(x, cos, sin, half, d, std::min<int64_t>(kLanes, half - d));
  }
}

}  // namespace

void rope_rows(const RopeParams& p, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    switch (p.dtype) {
      case DType::kFloat32: rope_row<DType::kFloat32>(p, r); break;
      case DType::kBFloat16: rope_row<DType::kBFloat16>(p, r); break;
      default: rope_row<DType::kFloat16>(p, r); break;
    }
  }
}

}  // namespace FLUID_RT_ISA_NS
}  // namespace fluid_rt
