// Intel AMX tiles (Sapphire Rapids and later), for the avx512 copies of the kernels: the tile
// instructions as asm statements and the tile configuration. Whether a kernel may use them is
// cpu_amx_enabled() with cpu_has_amx_int8() / cpu_has_amx_bf16() (csrc/common/cpu_isa.h; the
// process asks Linux for the tile state once, there).
//
// A tile register holds up to 16 rows of up to 64 bytes; its shape comes from the configuration
// loaded by the thread that uses it (AmxConfig::load), and amx_release() frees the state again.
#pragma once
#include "common/isa.h"
#if FLUID_RT_ISA_AVX512 && defined(__x86_64__)
#include <cstdint>

// GCC's AMX intrinsics are asm statements that do not tell the compiler which memory they read or
// write; these do ("memory"), so that the stores filling a tile's source and the loads of a stored
// tile stay on their side of the tile instruction. Tile numbers are compile-time constants, printed
// into the instruction by %c.
#define FLUID_RT_AMX_LOAD(tmm, base, stride)                                                         \
  asm volatile("tileloadd (%0,%1,1), %%tmm%c2" ::"r"(base), "r"(static_cast<long>(stride)), "i"(tmm) \
               : "memory")
#define FLUID_RT_AMX_STORE(tmm, base, stride)                                                         \
  asm volatile("tilestored %%tmm%c2, (%0,%1,1)" ::"r"(base), "r"(static_cast<long>(stride)), "i"(tmm) \
               : "memory")
#define FLUID_RT_AMX_ZERO(tmm) asm volatile("tilezero %%tmm%c0" ::"i"(tmm))
// c += a . b: int8 with signed a and unsigned / signed b (4 k per 32-bit lane), or bfloat16 pairs
// into float32.
#define FLUID_RT_AMX_DPBSUD(c, a, b) \
  asm volatile("tdpbsud %%tmm%c0, %%tmm%c1, %%tmm%c2" ::"i"(b), "i"(a), "i"(c))
#define FLUID_RT_AMX_DPBSSD(c, a, b) \
  asm volatile("tdpbssd %%tmm%c0, %%tmm%c1, %%tmm%c2" ::"i"(b), "i"(a), "i"(c))
#define FLUID_RT_AMX_DPBF16PS(c, a, b) \
  asm volatile("tdpbf16ps %%tmm%c0, %%tmm%c1, %%tmm%c2" ::"i"(b), "i"(a), "i"(c))

namespace fluid_rt {

// The 64-byte tile configuration (palette 1): rows and bytes per row of each tile register.
struct alignas(64) AmxConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};

  AmxConfig& set(int tmm, int n_rows, int bytes_per_row) {
    rows[tmm] = static_cast<uint8_t>(n_rows);
    colsb[tmm] = static_cast<uint16_t>(bytes_per_row);
    return *this;
  }
  void load() const { asm volatile("ldtilecfg %0" ::"m"(*this) : "memory"); }
};

inline void amx_release() { asm volatile("tilerelease" ::: "memory"); }

}  // namespace fluid_rt
#endif
