// rms_norm's binding pieces that every impl of the op shares (bindings/common.h says how).
#pragma once
#include <optional>

#include "common.h"
#include "norm/params.h"

namespace fluid_rt {

inline constexpr char kRmsNormSchema[] =
    "rms_norm(Tensor(a!) x, Tensor weight, float eps, Tensor? add=None) -> Tensor";

inline constexpr ArgSpec kRmsNormArgs[] = {
    {"x", kAnyFloat, "... hidden>=1", Layout::kContiguous, kWritten},  // += add in place
    {"weight", kAnyFloat, "hidden", Layout::kContiguous},
    {"add", kAnyFloat, "... hidden", Layout::kRows, kOptional},  // e.g. a slice of a wider tensor
};
inline constexpr OpSpec kRmsNormSpec{kRmsNormArgs};

// Checks every argument and describes the call; the output pointer is left to the caller.
RmsNormParams describe_rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps,
                                const std::optional<at::Tensor>& add);

// The op's impl (for fused ops that run it without a dispatch: bindings/layer.cpp).
at::Tensor rms_norm_impl(const at::Tensor& x, const at::Tensor& weight, double eps,
                         const std::optional<at::Tensor>& add);

}  // namespace fluid_rt
