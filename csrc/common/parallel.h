// Splitting work over the threads of an enclosing `#pragma omp parallel` region.
#pragma once
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fluid_rt {

struct ItemRange {
  int64_t begin, end;
};

// This thread's contiguous share of n items (all of them without OpenMP or outside a region).
// Contiguous, so each thread streams its own part of a weight and tiles its own rows.
inline ItemRange thread_share(int64_t n) {
#ifdef _OPENMP
  const int64_t threads = omp_get_num_threads(), thread = omp_get_thread_num();
#else
  const int64_t threads = 1, thread = 0;
#endif
  return {n * thread / threads, n * (thread + 1) / threads};
}

}  // namespace fluid_rt
