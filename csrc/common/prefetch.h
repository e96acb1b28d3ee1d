// Software prefetch of a byte span into L1, for the CPU kernels that stream memory: the hardware
// streamer stops at each 4 KiB page, so a kernel whose loads alternate with a lot of arithmetic asks
// for the bytes a page or two ahead itself (entropy, the quantized matmul, the gated LoRA).
// Prefetches never fault, so a span may run past the end of its array.
#pragma once
#include <cstdint>

namespace fluid_rt {

constexpr int64_t kCacheLineBytes = 64;

// Every cache line of [p, p + bytes); with a constant `bytes` the loop unrolls away.
inline void prefetch_span(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += kCacheLineBytes) __builtin_prefetch(c + b, 0, 3);
}

}  // namespace fluid_rt
