// Shared argument-checking helpers for the op bindings. Every message names the argument, and
// every check raises ValueError (FLUID_CHECK_VALUE) for shape/dtype/value problems and
// RuntimeError (FLUID_CHECK) for device problems, so Python sees a clear error, never a crash.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdio>
#include <string>
#include <type_traits>

#include "common/dtype.h"

#ifdef FLUID_RT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace fluid_rt {

// Error messages are assembled here, not with c10::str: numbers go through std::to_string /
// snprintf and never through std::ostream's locale facets. A process whose libstdc++ differs from
// the one this extension was compiled against (seen: torch 2.11 + g++ 13.3 on a GPU machine)
// crashed formatting an integer into an error message, turning a ValueError into a segfault.
inline void append_piece(std::string& out, const char* s) { out += s ? s : "(null)"; }
inline void append_piece(std::string& out, const std::string& s) { out += s; }
inline void append_piece(std::string& out, c10::ScalarType t) { out += c10::toString(t); }
inline void append_piece(std::string& out, const c10::Device& d) { out += d.str(); }
inline void append_piece(std::string& out, c10::IntArrayRef a) {
  out += '[';
  for (size_t i = 0; i < a.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(a[i]);
  }
  out += ']';
}
template <typename T>
inline std::enable_if_t<std::is_arithmetic_v<T>> append_piece(std::string& out, T v) {
  if constexpr (std::is_same_v<T, bool>) {
    out += v ? "true" : "false";
  } else if constexpr (std::is_integral_v<T>) {
    out += std::to_string(v);
  } else {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%.6g", static_cast<double>(v));
    out += buf;
  }
}

template <typename... Args>
std::string message(const Args&... args) {
  std::string out;
  (append_piece(out, args), ...);
  return out;
}

// TORCH_CHECK_VALUE / TORCH_CHECK with the message built by fluid_rt::message (only on failure).
#define FLUID_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, ::fluid_rt::message(__VA_ARGS__))
#define FLUID_CHECK(cond, ...) TORCH_CHECK(cond, ::fluid_rt::message(__VA_ARGS__))

inline DType float_dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kHalf: return DType::kFloat16;
    default:
      FLUID_CHECK_VALUE(false, name, ": expected float32, bfloat16 or float16, got ", t.scalar_type());
  }
  return DType::kFloat32;
}

inline void check_dtype(const at::Tensor& t, at::ScalarType want, const char* name) {
  FLUID_CHECK_VALUE(t.scalar_type() == want, name, ": expected dtype ", want, ", got ", t.scalar_type());
}

inline void check_rank(const at::Tensor& t, int64_t rank, const char* name) {
  FLUID_CHECK_VALUE(t.dim() == rank, name, ": expected a ", rank, "-D tensor, got shape ", t.sizes());
}

inline void check_size(const at::Tensor& t, int64_t dim, int64_t want, const char* name, const char* what) {
  FLUID_CHECK_VALUE(t.size(dim) == want, name, ": dim ", dim, " (", what, ") must be ", want, ", got shape ",
                    t.sizes());
}

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name, const char* ref_name) {
  FLUID_CHECK(t.device() == ref.device(), name, ": expected device ", ref.device(), " (that of ", ref_name,
              "), got ", t.device());
}

inline void check_supported_device(const at::Tensor& t, const char* name) {
#ifdef FLUID_RT_WITH_CUDA
  FLUID_CHECK(t.is_cpu() || t.is_cuda(), name, ": expected a CPU or CUDA tensor, got ", t.device());
#else
  FLUID_CHECK(t.is_cpu(), name, ": expected a CPU tensor, got ", t.device(),
              " (this build of fluid_rt has no CUDA kernels)");
#endif
}

inline void check_contiguous(const at::Tensor& t, const char* name) {
  FLUID_CHECK_VALUE(t.is_contiguous(), name, ": expected a contiguous tensor, got strides ", t.strides());
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* name) {
  FLUID_CHECK_VALUE(t.dim() > 0 && (t.stride(-1) == 1 || t.size(-1) == 1), name,
                    ": the last dimension must be contiguous (stride 1), got strides ", t.strides());
}

// The one stride between consecutive rows of a [..., H] tensor whose last dim is contiguous and
// whose leading dims collapse (e.g. a column slice of a wider matrix); H for a single row.
inline int64_t collapsed_row_stride(const at::Tensor& t, const char* name) {
  check_last_dim_contiguous(t, name);
  int64_t row_stride = t.size(-1), expect = -1;
  bool first = true;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (first) {
      row_stride = t.stride(d), first = false;
    } else {
      FLUID_CHECK_VALUE(t.stride(d) == expect, name,
                        ": the leading dims must collapse to one row stride, got strides ", t.strides());
    }
    expect = t.stride(d) * t.size(d);
  }
  return row_stride;
}

// Two tensors whose storage ranges intersect cannot be written and read by the same op safely.
inline bool storage_overlaps(const at::Tensor& a, const at::Tensor& b) {
  if (!a.defined() || !b.defined() || a.numel() == 0 || b.numel() == 0) return false;
  if (!a.has_storage() || !b.has_storage()) return false;
  if (a.storage().data() != b.storage().data()) return false;
  auto span = [](const at::Tensor& t) {
    int64_t lo = t.storage_offset(), hi = t.storage_offset();
    for (int64_t d = 0; d < t.dim(); ++d) hi += (t.size(d) - 1) * t.stride(d);
    return std::make_pair(lo * t.element_size(), (hi + 1) * t.element_size());
  };
  auto [a0, a1] = span(a);
  auto [b0, b1] = span(b);
  return a0 < b1 && b0 < a1;
}

inline void check_no_overlap(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  FLUID_CHECK_VALUE(!storage_overlaps(a, b), a_name, " and ", b_name, " must not share memory");
}

#ifdef FLUID_RT_WITH_CUDA
inline cudaStream_t current_stream_for(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#endif

}  // namespace fluid_rt
