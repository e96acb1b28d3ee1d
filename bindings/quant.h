// quant_linear's output and params for fused ops that run it without a dispatch (bindings/layer.cpp);
// the op's schema, checks and registration are in bindings/quant.cpp.
#pragma once
#include <optional>

#include "common.h"
#include "quant/params.h"

namespace fluid_rt {

// quant_linear's output for checked arguments (x [..., K] or [..., 2K] with silu_and_mul, packed
// of format f for out_features columns, bias): allocates y [..., out_features] and describes the
// call in p (run it with quant_linear_cpu). quant_linear_impl checks first; decoder_layer_ checks a
// whole layer up front and then calls this directly.
at::Tensor quant_linear_output(const at::Tensor& x, const at::Tensor& packed, QuantFormat f, int64_t K,
                               int64_t out_features, const std::optional<at::Tensor>& bias, bool silu_and_mul,
                               QuantLinearParams& p);

}  // namespace fluid_rt
