// Shared pieces of the op bindings: error messages, the declarative argument checks, and the
// device scope / launch check of the one impl per op.
//
// Every check raises ValueError (FLUID_CHECK_VALUE) for a shape/dtype/stride/value problem and
// RuntimeError (FLUID_CHECK) for a device problem, with a message that starts with the argument's
// name, so Python sees a clear error, never a crash.
//
// How an op checks its arguments (see bindings/norm.cpp for a short example):
//   1. A table of ArgSpec, one row per tensor argument in schema order, names each argument once
//      and says everything the binding requires of it: dtypes, shape (symbolic dims such as
//      "batch Kmax" are shared across the rows of the table), strides, optional or not, and
//      whether the op writes it (then it may share memory with no other argument). An OpSpec
//      adds the devices. check_args(spec, {tensors...}) is the one function that checks a table.
//   2. What a table cannot say (scalars, rules across dims such as Hq % Hkv == 0) follows in the
//      op's describe_<op>() (bindings/<family>.h), which also fills the op's params struct.
//   3. The op has one impl, registered for the CPU and (in a CUDA build) the CUDA dispatch keys:
//      describe, allocate outputs, then `if (t.is_cpu())` the CPU kernel, else the CUDA launch.
//      Values only the device knows are checked on the CPU branch alone (no host sync on CUDA:
//      the kernels guard them).
//
// Another impl of an op (an emulated CUDA kernel under another library namespace, a new device)
// reuses all of it: define the op with the family's schema string (k<Op>Schema in
// bindings/<family>.h, e.g. `m.def(kRmsNormSchema)` inside TORCH_LIBRARY(fluid_rt_emu, m)), call
// describe_<op>() on the arguments (it runs check_args on the op's table and the op's own rules),
// allocate outputs as the real impl does, and run its own kernel on the params (bindings/emu_ops.cpp
// does so for every op with a CUDA impl; like the CUDA branch, it leaves the device-held values to
// the kernels). A new op with the same arguments as an existing one calls check_args(k<Op>Spec,
// {...}) on the same table.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdio>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>

#include "common/dtype.h"

#ifdef FLUID_RT_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#endif

namespace fluid_rt {

// Error messages are assembled here, not with c10::str: numbers go through std::to_string /
// snprintf and never through std::ostream's locale facets. A process whose libstdc++ differs from
// the one this extension was compiled against (seen: torch 2.11 + g++ 13.3 on a GPU machine)
// crashed formatting an integer into an error message, turning a ValueError into a segfault.
inline void append_piece(std::string& out, const char* s) { out += s ? s : "(null)"; }
inline void append_piece(std::string& out, const std::string& s) { out += s; }
inline void append_piece(std::string& out, std::string_view s) { out += s; }
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
    default: FLUID_CHECK_VALUE(false, name, ": expected float32, bfloat16 or float16, got ", t.scalar_type());
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

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name,
                              const char* ref_name) {
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
  if (t.numel() == 0) return t.size(-1);  // no row is addressed
  int64_t stride = t.size(-1), expect = -1;
  bool first = true;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) continue;
    if (first) {
      stride = t.stride(d), first = false;
    } else {
      FLUID_CHECK_VALUE(t.stride(d) == expect, name,
                        ": the leading dims must collapse to one row stride, got strides ", t.strides());
    }
    expect = t.stride(d) * t.size(d);
  }
  return stride;
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

inline void check_no_overlap(const at::Tensor& a, const char* a_name, const at::Tensor& b,
                             const char* b_name) {
  FLUID_CHECK_VALUE(!storage_overlaps(a, b), a_name, " and ", b_name, " must not share memory");
}

// --- Declarative argument checks ---------------------------------------------------------------

// The dtypes an argument may have (bits of one mask). kOpFloat marks the op's one float dtype: the
// first such argument given picks it from its set, every later one must have that same dtype.
enum DtypeSet : uint32_t {
  kF32 = 1u << 0,
  kBF16 = 1u << 1,
  kF16 = 1u << 2,
  kI32 = 1u << 3,
  kI64 = 1u << 4,
  kBool = 1u << 5,
  kU8 = 1u << 6,  // raw bytes, e.g. packed quantized blocks
  kI8 = 1u << 7,
  kOpFloat = 1u << 31,
  kAnyFloat = kOpFloat | kF32 | kBF16 | kF16,  // the op's float dtype: float32, bfloat16 or float16
};

enum class Layout : uint8_t {
  kAny,                // any strides (the kernel takes them all)
  kContiguous,         // row-major, no gaps
  kLastDimContiguous,  // stride 1 in the last dim; the others are passed to the kernel
  kRows,               // last dim contiguous and the leading dims at one row stride (row_stride())
};

enum ArgFlags : uint8_t {
  kRequired = 0,
  kOptional = 1u << 0,  // a `Tensor?` of the schema
  kWritten = 1u << 1,   // mutated in place: may share memory with no other argument
};

// One tensor argument. `shape` lists the dims by name, space separated: a name already bound by an
// earlier argument must match its size; "..." first stands for any leading dims (bound like a
// name: every "..." of a table is the same dims); "name>=N" also requires size >= N.
struct ArgSpec {
  const char* name;
  uint32_t dtypes;
  const char* shape;
  Layout layout = Layout::kAny;
  uint8_t flags = kRequired;
};

struct OpSpec {
  std::span<const ArgSpec> args;
  // nullptr: the op runs on the CPU and, in a CUDA build, on CUDA. Otherwise the op is CPU-only and
  // this says why, in the message "<arg>: <cpu_only>, got a tensor on <device>".
  const char* cpu_only = nullptr;
};

// One given argument of a check_args call: a tensor, or an absent optional one.
struct ArgRef {
  const at::Tensor* tensor;
  ArgRef(const at::Tensor& t) : tensor(&t) {}
  ArgRef(const std::optional<at::Tensor>& t) : tensor(t.has_value() ? &*t : nullptr) {}
};

// Checks the tensors (in the order of spec.args) against the table: presence, device (all on the
// device of the first, one this build supports), dtype, shape, strides, and no argument sharing
// memory with a written one. Reads no tensor data, so it never syncs with a device.
void check_args(const OpSpec& spec, std::initializer_list<ArgRef> tensors);

// The row stride of a [..., H] tensor that passed Layout::kRows.
inline int64_t row_stride(const at::Tensor& t) {
  int64_t stride = t.dim() > 0 ? t.size(-1) : 1;
  for (int64_t d = t.dim() - 2; d >= 0; --d)
    if (t.size(d) != 1) return t.stride(d);
  return stride;
}

// A linear op's x: its last dim is in_features, or 2 * in_features = [gate, up] with silu_and_mul
// (SwiGLU's down projection). `weight` names the tensor in_features comes from, for the message.
inline void check_linear_input(const at::Tensor& x, int64_t in_features, bool silu_and_mul,
                               const char* weight, const at::Tensor& w) {
  const int64_t want = silu_and_mul ? 2 * in_features : in_features;
  FLUID_CHECK_VALUE(x.size(-1) == want, "x: the last dim must be ",
                    silu_and_mul ? "2 * in_features = " : "in_features = ", want, " (", weight, " is ",
                    w.sizes(), "), got shape ", x.sizes());
}

// --- One impl per op: the device branch ---------------------------------------------------------

// Makes t's CUDA device current for the scope (outputs and launches go there); nothing for a CPU
// tensor.
class DeviceScope {
 public:
#ifdef FLUID_RT_WITH_CUDA
  explicit DeviceScope(const at::Tensor& t) {
    if (t.is_cuda()) guard_.set_device(t.device());
  }

 private:
  c10::cuda::OptionalCUDAGuard guard_;
#else
  explicit DeviceScope(const at::Tensor&) {}
#endif
};

#ifdef FLUID_RT_WITH_CUDA
inline cudaStream_t current_stream_for(const at::Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

// `err`: what a launch returned (or cudaGetLastError() after it).
inline void check_cuda_launch(cudaError_t err, const char* op) {
  FLUID_CHECK(err == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err));
}
#endif

}  // namespace fluid_rt
