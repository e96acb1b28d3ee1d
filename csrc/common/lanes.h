// Lane masks for the vector tails of the CPU kernels (AVX-512: 16 float32 lanes per vector).
#pragma once
#include <cstdint>

namespace fluid_rt {

// The first n of 16 lanes (n clamped to 0..16), as a __mmask16 bit pattern.
inline uint16_t first_lanes16(int64_t n) {
  return n >= 16 ? 0xffff : n <= 0 ? 0 : static_cast<uint16_t>((1u << n) - 1);
}

}  // namespace fluid_rt
