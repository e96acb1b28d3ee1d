// rope_'s impl, for fused ops that run it without a dispatch (bindings/layer.cpp); the op's schema,
// checks and registration are in bindings/rope.cpp.
#pragma once
#include "common.h"

namespace fluid_rt {

void rope_impl(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace fluid_rt
