// gated_lora_'s argument checks, shared by its own op and quant_linear's fused form.
#pragma once
#include <vector>

#include "common.h"
#include "lora/params.h"

namespace fluid_rt {

// Checks the arguments of gated_lora_(y, x, rows, a_t, b_t, silu_and_mul, out_parts) and describes
// the call; `ends` receives the parts' cumulative ends, which the params point into.
GatedLoraParams describe_gated_lora(const at::Tensor& y, const at::Tensor& x, const at::Tensor& rows,
                                    const at::Tensor& a_t, const at::Tensor& b_t, bool silu_and_mul,
                                    at::IntArrayRef out_parts, std::vector<int64_t>& ends);

// The same checks of rows and factors for a call whose input and output are not made yet (the layer
// op checks its projections before it computes them): n rows, `in` -> `out` features, activations
// of `dtype`. The params lack y and x (pointers and strides), which the caller sets.
GatedLoraParams describe_lora_factors(int64_t n, int64_t in, int64_t out, at::ScalarType dtype,
                                      const at::Tensor& rows, const at::Tensor& a_t, const at::Tensor& b_t,
                                      bool silu_and_mul, at::IntArrayRef out_parts,
                                      std::vector<int64_t>& ends);

}  // namespace fluid_rt
