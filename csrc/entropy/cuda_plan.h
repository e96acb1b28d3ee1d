// token_entropy on CUDA: the host-side plan (row splits, CTA size, workspace), shared by the
// launcher (cuda_kernels.cuh), cuda.cu and the emulation build. Torch-free and CUDA-free.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace fluid_rt {

constexpr int64_t kEntropyMinPiece = 4096;  // logits per CTA below which splitting a row does not pay
constexpr int kEntropyMaxSplits = 64;
constexpr size_t kEntropyStatsBytes = 32;  // one partial tuple (cuda_kernels.cuh: Stats)

// CTAs per row for `rows` rows of `vocab` logits on a device with num_sms SMs.
inline int token_entropy_splits_for_sms(int64_t rows, int64_t vocab, int num_sms) {
  const int64_t target = 4LL * num_sms;  // CTAs to keep every SM streaming
  if (rows <= 0 || rows >= target) return 1;
  int64_t splits = (target + rows - 1) / rows;
  splits = std::min<int64_t>(splits, vocab / kEntropyMinPiece);
  splits = std::min<int64_t>(splits, kEntropyMaxSplits);
  return static_cast<int>(std::max<int64_t>(splits, 1));
}

// Logits per CTA: the whole row, or a 64-aligned share of it.
inline int64_t token_entropy_piece(int64_t vocab, int splits) {
  return splits <= 1 ? vocab : ((vocab + splits - 1) / splits + 63) / 64 * 64;
}

inline int token_entropy_threads(int64_t per_cta) {
  return per_cta >= 16384 ? 512 : per_cta >= 2048 ? 256 : per_cta >= 256 ? 128 : 64;
}

}  // namespace fluid_rt
