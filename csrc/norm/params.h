// rms_norm: the pre-norm of every transformer layer, optionally fused with the residual add that
// precedes it (FlashInfer's fused_add_rmsnorm):
//   if add:  x = x + add                      (in place, rounded to x's dtype, as torch's add)
//   out = weight * to_dtype(x * rsqrt(mean(x^2) + eps))   (float32 math; HF Llama's order: the
//                                                           normed value is rounded to x's dtype
//                                                           before the weight multiplies it)
// Per row of H elements; rows are contiguous (row r at r * H).
#pragma once
#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace fluid_rt {

struct RmsNormParams {
  void* x = nullptr;             // [rows, H] (updated to x + add when add is given)
  const void* add = nullptr;     // [rows, H] or null; row r at add + r * add_row_stride
  int64_t add_row_stride = 0;    // in elements
  const void* weight = nullptr;  // [H]
  void* out = nullptr;           // [rows, H]
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t hidden = 0;
  float eps = 1e-5f;
};

void rms_norm_cpu(const RmsNormParams& p);

// Returns the cudaError_t of the launch (0: success).
int launch_rms_norm(const RmsNormParams& p, CUstream_st* stream);

}  // namespace fluid_rt
