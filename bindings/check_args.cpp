// check_args: the one function that checks an op's tensor arguments against its ArgSpec table
// (bindings/common.h). Messages keep the form of the per-op checks they replaced: they start with
// the argument's name and show the offending shape, strides, dtype or device.
#include <algorithm>
#include <charconv>
#include <string_view>

#include "common.h"

namespace fluid_rt {
namespace {

struct DtypeName {
  uint32_t bit;
  at::ScalarType type;
  const char* name;
};
constexpr DtypeName kDtypeNames[] = {
    {kF32, at::kFloat, "float32"}, {kBF16, at::kBFloat16, "bfloat16"}, {kF16, at::kHalf, "float16"},
    {kI32, at::kInt, "int32"},     {kI64, at::kLong, "int64"},         {kBool, at::kBool, "bool"},
    {kU8, at::kByte, "uint8"},     {kI8, at::kChar, "int8"},
};

uint32_t dtype_bit(at::ScalarType t) {
  for (const DtypeName& d : kDtypeNames)
    if (d.type == t) return d.bit;
  return 0;
}

// "float32, bfloat16 or float16" for a set of several dtypes.
std::string dtype_list(uint32_t set) {
  std::string out;
  int left = 0;
  for (const DtypeName& d : kDtypeNames) left += (set & d.bit) != 0;
  for (const DtypeName& d : kDtypeNames) {
    if (!(set & d.bit)) continue;
    out += d.name;
    --left;
    out += left > 1 ? ", " : left == 1 ? " or " : "";
  }
  return out;
}

// A parsed `shape` of an ArgSpec: "... a b>=1" -> leading = true, dims {a, 0}, {b, 1}.
struct ShapeDims {
  static constexpr int kMax = 8;
  bool leading = false;
  int count = 0;
  std::string_view names[kMax];
  int64_t min[kMax] = {};
};

ShapeDims parse_shape(const char* shape) {
  ShapeDims s;
  std::string_view rest(shape);
  while (!rest.empty()) {
    const size_t end = std::min(rest.find(' '), rest.size());
    std::string_view token = rest.substr(0, end);
    rest.remove_prefix(std::min(end + 1, rest.size()));
    if (token.empty()) continue;
    if (token == "...") {
      s.leading = true;
      continue;
    }
    FLUID_CHECK(s.count < ShapeDims::kMax, "fluid_rt internal: too many dims in the ArgSpec shape ", shape);
    const size_t ge = token.find(">=");
    s.names[s.count] = token.substr(0, ge);
    if (ge != std::string_view::npos) {
      const std::string_view digits = token.substr(ge + 2);
      std::from_chars(digits.data(), digits.data() + digits.size(), s.min[s.count]);
    }
    ++s.count;
  }
  return s;
}

// "[batch, Kmax]" or "[..., hidden]": the shape an argument must have, for messages.
std::string shape_text(const ShapeDims& s) {
  std::string out = s.leading ? "[..." : "[";
  for (int i = 0; i < s.count; ++i) {
    if (i || s.leading) out += ", ";
    out += s.names[i];
  }
  return out + "]";
}

// The sizes bound to the symbolic dims of one check_args call, and the argument that bound each.
class DimBindings {
 public:
  void check(const at::Tensor& t, const char* name, const char* shape) {
    const ShapeDims s = parse_shape(shape);
    const int64_t lead = t.dim() - s.count;
    if (s.leading) {
      FLUID_CHECK_VALUE(lead >= 0, name, ": expected a tensor of shape ", shape_text(s), ", got shape ",
                        t.sizes());
      check_leading(t, name, t.sizes().slice(0, lead));
    } else {
      FLUID_CHECK_VALUE(lead == 0, name, ": expected a ", s.count, "-D tensor ", shape_text(s),
                        ", got shape ", t.sizes());
    }
    for (int i = 0; i < s.count; ++i) check_dim(t, name, lead + i, s.names[i], s.min[i]);
  }

 private:
  struct Bound {
    std::string_view dim;
    int64_t size;
    const char* by;
  };

  void check_leading(const at::Tensor& t, const char* name, c10::IntArrayRef sizes) {
    if (!leading_by_) {
      leading_ = sizes, leading_by_ = name;
      return;
    }
    FLUID_CHECK_VALUE(sizes == leading_, name, ": expected the leading dims ", leading_, " (those of ",
                      leading_by_, "), got shape ", t.sizes());
  }

  void check_dim(const at::Tensor& t, const char* name, int64_t d, std::string_view dim, int64_t min) {
    const int64_t size = t.size(d);
    for (int i = 0; i < count_; ++i) {
      if (bound_[i].dim != dim) continue;
      FLUID_CHECK_VALUE(size == bound_[i].size, name, ": dim ", d, " (", dim, ", as ", bound_[i].by,
                        ") must be ", bound_[i].size, ", got shape ", t.sizes());
      return;
    }
    FLUID_CHECK_VALUE(size >= min, name, ": dim ", d, " (", dim, ") must be >= ", min, ", got shape ",
                      t.sizes());
    FLUID_CHECK(count_ < kMaxDims, "fluid_rt internal: too many symbolic dims in one OpSpec");
    bound_[count_++] = {dim, size, name};
  }

  static constexpr int kMaxDims = 16;
  Bound bound_[kMaxDims];
  int count_ = 0;
  c10::IntArrayRef leading_;
  const char* leading_by_ = nullptr;
};

void check_device(const at::Tensor& t, const char* name, const OpSpec& spec, const at::Tensor* first,
                  const char* first_name) {
  if (first) {
    check_same_device(t, *first, name, first_name);
  } else if (spec.cpu_only) {
    FLUID_CHECK(t.is_cpu(), name, ": ", spec.cpu_only, ", got a tensor on ", t.device());
  } else {
    check_supported_device(t, name);
  }
}

// Returns the op's float dtype once an argument has picked it.
std::optional<at::ScalarType> check_dtype_in(const at::Tensor& t, const char* name, uint32_t set,
                                             std::optional<at::ScalarType> op_float) {
  const at::ScalarType type = t.scalar_type();
  if ((set & kOpFloat) && op_float) {
    FLUID_CHECK_VALUE(type == *op_float, name, ": expected dtype ", *op_float, ", got ", type);
    return op_float;
  }
  const uint32_t allowed = set & ~kOpFloat;
  if (__builtin_popcount(allowed) == 1) {
    FLUID_CHECK_VALUE(dtype_bit(type) & allowed, name, ": expected dtype ",
                      kDtypeNames[__builtin_ctz(allowed)].type, ", got ", type);
  } else {
    FLUID_CHECK_VALUE(dtype_bit(type) & allowed, name, ": expected ", dtype_list(allowed), ", got ", type);
  }
  return (set & kOpFloat) ? std::optional<at::ScalarType>(type) : op_float;
}

void check_layout(const at::Tensor& t, const char* name, Layout layout) {
  switch (layout) {
    case Layout::kAny: return;
    case Layout::kContiguous: return check_contiguous(t, name);
    case Layout::kLastDimContiguous: return check_last_dim_contiguous(t, name);
    case Layout::kRows: collapsed_row_stride(t, name); return;
  }
}

void check_no_sharing(const OpSpec& spec, std::initializer_list<ArgRef> tensors) {
  const ArgRef* given = tensors.begin();
  for (size_t i = 0; i < tensors.size(); ++i) {
    for (size_t k = i + 1; k < tensors.size(); ++k) {
      const ArgSpec &a = spec.args[i], &b = spec.args[k];
      if (!given[i].tensor || !given[k].tensor || !((a.flags | b.flags) & kWritten)) continue;
      check_no_overlap(*given[i].tensor, a.name, *given[k].tensor, b.name);
    }
  }
}

}  // namespace

void check_args(const OpSpec& spec, std::initializer_list<ArgRef> tensors) {
  FLUID_CHECK(tensors.size() == spec.args.size(), "fluid_rt internal: check_args got ", tensors.size(),
              " tensors for a table of ", spec.args.size());
  DimBindings dims;
  std::optional<at::ScalarType> op_float;
  const at::Tensor* first = nullptr;
  const char* first_name = nullptr;
  const ArgRef* given = tensors.begin();
  for (size_t i = 0; i < tensors.size(); ++i) {
    const ArgSpec& arg = spec.args[i];
    const at::Tensor* t = given[i].tensor;
    FLUID_CHECK_VALUE(t || (arg.flags & kOptional), arg.name, ": expected a tensor, got None");
    if (!t) continue;
    FLUID_CHECK_VALUE(t->defined(), arg.name, ": expected a tensor, got an undefined one");
    check_device(*t, arg.name, spec, first, first_name);
    if (!first) first = t, first_name = arg.name;
    op_float = check_dtype_in(*t, arg.name, arg.dtypes, op_float);
    dims.check(*t, arg.name, arg.shape);
    check_layout(*t, arg.name, arg.layout);
  }
  check_no_sharing(spec, tensors);
}

}  // namespace fluid_rt
