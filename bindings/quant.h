// quant_linear's impl, for fused ops that run it without a dispatch (bindings/layer.cpp); the op's
// schema, checks and registration are in bindings/quant.cpp.
#pragma once
#include <optional>

#include "common.h"

namespace fluid_rt {

at::Tensor quant_linear_impl(const at::Tensor& x, const at::Tensor& packed, int64_t format,
                             int64_t out_features, const std::optional<at::Tensor>& bias, bool silu_and_mul,
                             const std::optional<at::Tensor>& lora_rows,
                             const std::optional<at::Tensor>& lora_a_t,
                             const std::optional<at::Tensor>& lora_b, at::IntArrayRef lora_out_parts);

}  // namespace fluid_rt
