// token_entropy on CUDA: the kernels live in cuda_kernels.cuh (also compiled by the emulation build);
// this file instantiates them for nvcc behind the entry points of params.h.
#include "entropy/cuda_kernels.cuh"

namespace fluid_rt {
namespace {

int num_sms(int device) {
  static int cache[128] = {0};
  if (device < 0 || device >= 128) return 108;
  if (cache[device] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
      cudaGetLastError();
      n = 108;
    }
    cache[device] = n;
  }
  return cache[device];
}

}  // namespace

int token_entropy_cuda_splits(int64_t rows, int64_t vocab, int device) {
  return token_entropy_splits_for_sms(rows, vocab, num_sms(device));
}

size_t token_entropy_cuda_workspace_bytes(int64_t rows, int splits) {
  return static_cast<size_t>(rows) * static_cast<size_t>(splits) * kEntropyStatsBytes;
}

int launch_token_entropy(const TokenEntropyParams& p, int splits, void* workspace, CUstream_st* stream) {
  return token_entropy_launch(p, splits, workspace, stream);
}

}  // namespace fluid_rt
