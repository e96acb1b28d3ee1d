// Included by `*.isa.cpp` files, which CMake compiles once per CPU path (see cpu_isa.h).
// It defines FLUID_RT_ISA (0 portable, 1 avx2, 2 avx512) when the build did not, and the namespace
// name FLUID_RT_ISA_NS that keeps the three copies of each function apart.
#pragma once

#include "common/cpu_isa.h"

#ifndef FLUID_RT_ISA
#define FLUID_RT_ISA 0
#endif

#if FLUID_RT_ISA == 2
#define FLUID_RT_ISA_NS isa_avx512
#elif FLUID_RT_ISA == 1
#define FLUID_RT_ISA_NS isa_avx2
#else
#define FLUID_RT_ISA_NS isa_portable
#endif

// Compile-time view of the path this copy is built for.
#define FLUID_RT_ISA_AVX512 (FLUID_RT_ISA == 2)
#define FLUID_RT_ISA_AVX2 (FLUID_RT_ISA >= 1)  // the avx512 copy may use AVX2 code as well

#if FLUID_RT_ISA >= 1 && !defined(__x86_64__)
#error "the avx2/avx512 copies are x86-64 only"
#endif

#if FLUID_RT_ISA >= 1
#include <immintrin.h>
#endif

// Declare one function for every path: FLUID_RT_DECLARE_ISA(void, run_thing, (const Params&));
// gives isa_portable::run_thing, isa_avx2::run_thing and isa_avx512::run_thing.
#define FLUID_RT_DECLARE_ISA(ret, name, args) \
  namespace isa_portable {                    \
  ret name args;                              \
  }                                           \
  namespace isa_avx2 {                        \
  ret name args;                              \
  }                                           \
  namespace isa_avx512 {                      \
  ret name args;                              \
  }

namespace fluid_rt {

// The copy of a function for the path in use: FLUID_RT_ISA_PICK(run_thing)(params).
template <class Fn>
inline Fn pick_isa(Fn portable, [[maybe_unused]] Fn avx2, [[maybe_unused]] Fn avx512) {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return avx512;
    case CpuIsa::kAvx2: return avx2;
    default: return portable;
  }
}

}  // namespace fluid_rt

#if defined(__x86_64__)
#define FLUID_RT_ISA_PICK(name) ::fluid_rt::pick_isa(&isa_portable::name, &isa_avx2::name, &isa_avx512::name)
#else
#define FLUID_RT_ISA_PICK(name) (&isa_portable::name)
#endif
