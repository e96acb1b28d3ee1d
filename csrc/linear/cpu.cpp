// CPU packed_linear: packing and unpacking the weight's 32-column panels (params.h), and the pick
// of the multiply kernel for the CPU path in use (packed_linear.isa.cpp, one copy per path).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <memory>
#include <utility>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "linear/kernels.h"
#include "linear/params.h"

namespace fluid_rt {
namespace {

int64_t esize(DType t) { return t == DType::kFloat32 ? 4 : 2; }

// Element (k, column c) of panel `panel` (width w) in the packed buffer.
inline int64_t packed_index(DType dt, int64_t K, int64_t panel, int64_t w, int64_t k, int64_t c) {
  const int64_t base = panel * kLinearPanel * K;
  return dt == DType::kBFloat16 ? base + (k / 2) * w * 2 + c * 2 + k % 2  // [K / 2][w][2]
                                : base + k * w + c;                       // [K][w]
}

// Both directions walk one panel at a time (a few tens of KiB, cache-resident) so that the
// strided side of the copy stays in cache and the other side streams. Within a panel both dtypes
// are a [steps][w] matrix of 32-bit units (a float, or a bfloat16 pair of k), so the copy is a
// transpose of 32-bit units whenever the weight's k is contiguous (the usual [N, K] layout).
template <bool kPack>
void copy_panels_units(const PackLinearParams& p) {
  const int64_t panels = linear_num_panels(p.N), pair = p.dtype == DType::kBFloat16 ? 2 : 1;
  const int64_t steps = p.K / pair;
  uint32_t* packed = static_cast<uint32_t*>(p.packed);
  uint32_t* w_ptr = const_cast<uint32_t*>(static_cast<const uint32_t*>(p.w));  // written when unpacking
  const int64_t row = p.stride_n / pair;                                       // in units
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel, w = linear_panel_width(p.N, panel);
    uint32_t* pan = packed + panel * kLinearPanel * steps;
    constexpr int64_t kBlock = 64;  // steps per block: 8 KiB of a full panel, L1-resident
    for (int64_t s0 = 0; s0 < steps; s0 += kBlock) {
      const int64_t s1 = std::min(steps, s0 + kBlock);
      for (int64_t c = 0; c < w; ++c) {
        uint32_t* wr = w_ptr + (n0 + c) * row;
        for (int64_t s = s0; s < s1; ++s) {
          if (kPack)
            pan[s * w + c] = wr[s];
          else
            wr[s] = pan[s * w + c];
        }
      }
    }
  }
}

// W stored k-major ([K][N], stride_n == 1): each step of a panel is one run of w floats in a row of
// W (float32), or two runs, de-interleaved from the w pairs (bfloat16). Used to unpack slices for
// oneDNN, which multiplies that layout without repacking it. The pair loop below is what the
// compiler vectorizes (interleave / de-interleave shuffles) at the baseline flags.
template <bool kPack>
void copy_panels_kmajor(const PackLinearParams& p) {
  const int64_t panels = linear_num_panels(p.N), es = esize(p.dtype);
  const bool bf16 = p.dtype == DType::kBFloat16;
  char* packed = static_cast<char*>(p.packed);
  char* w_ptr = const_cast<char*>(static_cast<const char*>(p.w));  // written when unpacking
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel, w = linear_panel_width(p.N, panel);
    char* pan = packed + panel * kLinearPanel * p.K * es;
    if (!bf16) {
      for (int64_t k = 0; k < p.K; ++k) {
        char* row = w_ptr + (k * p.stride_k + n0) * es;
        if (kPack)
          std::memcpy(pan + k * w * es, row, w * es);
        else
          std::memcpy(row, pan + k * w * es, w * es);
      }
      continue;
    }
    uint16_t* pairs = reinterpret_cast<uint16_t*>(pan);
    uint16_t* W = reinterpret_cast<uint16_t*>(w_ptr);
    for (int64_t kk = 0; kk < p.K / 2; ++kk) {
      uint16_t* even = W + 2 * kk * p.stride_k + n0;
      uint16_t* odd = even + p.stride_k;
      uint16_t* step = pairs + kk * w * 2;
      for (int64_t c = 0; c < w; ++c) {
        if (kPack)
          step[2 * c] = even[c], step[2 * c + 1] = odd[c];
        else
          even[c] = step[2 * c], odd[c] = step[2 * c + 1];
      }
    }
  }
}

// Any strides, element by element (packing from a transposed or sliced weight, once at load).
template <typename T, bool kPack>
void copy_panels_strided(const PackLinearParams& p) {
  const int64_t panels = linear_num_panels(p.N);
  T* packed = static_cast<T*>(p.packed);
  T* w_ptr = const_cast<T*>(static_cast<const T*>(p.w));  // written when unpacking
#pragma omp parallel for schedule(static) if (p.K * p.N >= (1 << 16))
  for (int64_t panel = 0; panel < panels; ++panel) {
    const int64_t n0 = panel * kLinearPanel, w = linear_panel_width(p.N, panel);
    for (int64_t c = 0; c < w; ++c) {
      for (int64_t k = 0; k < p.K; ++k) {
        T& a = packed[packed_index(p.dtype, p.K, panel, w, k, c)];
        T& b = w_ptr[k * p.stride_k + (n0 + c) * p.stride_n];
        if (kPack)
          a = b;
        else
          b = a;
      }
    }
  }
}

template <bool kPack>
void copy_panels(const PackLinearParams& p) {
  const int64_t pair = p.dtype == DType::kBFloat16 ? 2 : 1;
  if (p.stride_k == 1 && p.stride_n % pair == 0 && reinterpret_cast<uintptr_t>(p.w) % 4 == 0)
    copy_panels_units<kPack>(p);
  else if (p.stride_n == 1)
    copy_panels_kmajor<kPack>(p);
  else if (p.dtype == DType::kFloat32)
    copy_panels_strided<float, kPack>(p);
  else
    copy_panels_strided<uint16_t, kPack>(p);
}

}  // namespace

void pack_linear_weight_cpu(const PackLinearParams& p) { copy_panels<true>(p); }

void unpack_linear_weight_cpu(const PackLinearParams& p) { copy_panels<false>(p); }

void packed_linear_cpu(const PackedLinearParams& p) { FLUID_RT_ISA_PICK(packed_linear_run)(p); }

}  // namespace fluid_rt
