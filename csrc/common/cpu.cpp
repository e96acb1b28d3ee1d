#include "common/cpu_features.h"

#include <cstdlib>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fluid_rt {

bool cpu_has_avx512() {
#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512)
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__) && defined(FLUID_RT_HAS_AVX512_BF16)
  static const bool has = cpu_has_avx512() && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

bool cpu_use_avx512() {
  const char* portable = std::getenv("FLUID_RT_CPU_PORTABLE");
  return cpu_has_avx512() && !(portable != nullptr && portable[0] == '1');
}

int cpu_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace fluid_rt
