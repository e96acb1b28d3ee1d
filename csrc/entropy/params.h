// token_entropy: per-row softmax statistics of logits / temperature in one pass over the row.
//
// For each row x[0..V) (scaled: y = x / T) the kernels keep the online triple
//   m = max_i x_i,   s = sum_i exp(d_i),   t = sum_i d_i * exp(d_i),   with d_i = (x_i - m) / T,
// rescaled whenever m grows (s' = s e^D, t' = (t + D s) e^D with D = (m_old - m_new) / T), and then
//   logsumexp = m / T + log s,   max_prob = 1 / s,   entropy = log s - t / s,
// which is -sum p log p with p = exp(d) / s. Keeping t relative to the running max (instead of
// sum y e^(y-m)) avoids the cancellation of m - t/s for large-magnitude logits (|x| ~ 1e4).
// Non-finite rows follow the rules documented in fluid_rt/ops/entropy.py (NaN wins, then +inf,
// then all -inf).
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/dtype.h"

struct CUstream_st;

namespace fluid_rt {

struct TokenEntropyParams {
  const void* logits = nullptr;  // row r starts at logits + r * row_stride (elements); stride 1 within
  DType dtype = DType::kFloat32;
  int64_t rows = 0;
  int64_t vocab = 0;             // V >= 1, < 2^31
  int64_t row_stride = 0;        // in elements
  float inv_temperature = 1.0f;  // 1 / T, finite and > 0
  int num_threads = 1;           // CPU only: OpenMP threads to use

  float* entropy = nullptr;    // [rows]
  float* max_prob = nullptr;   // [rows]
  int64_t* argmax = nullptr;   // [rows]
  float* logsumexp = nullptr;  // [rows]
};

// CPU: OpenMP over rows, and over pieces of a row when there are fewer rows than threads.
void token_entropy_cpu(const TokenEntropyParams& p);

// CUDA: `splits` CTAs per row; when splits > 1 a second kernel combines their partials, which live
// in a caller-provided workspace of token_entropy_cuda_workspace_bytes(rows, splits) bytes.
int token_entropy_cuda_splits(int64_t rows, int64_t vocab, int device);
size_t token_entropy_cuda_workspace_bytes(int64_t rows, int splits);
// Returns the cudaError_t of the launches (0: success).
int launch_token_entropy(const TokenEntropyParams& p, int splits, void* workspace, CUstream_st* stream);

}  // namespace fluid_rt
