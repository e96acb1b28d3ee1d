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

// M rows cut into the fewest tiles of at most max_rows, balanced: 17 rows in tiles of up to 12 run
// as 9 + 8, not 12 + 5 (a short tile wastes its registers, or streams the weight again for little
// work). Tile t covers rows [row_tile_start(t), row_tile_start(t + 1)); the first is the tallest.
inline int64_t row_tiles(int64_t M, int max_rows) { return (M + max_rows - 1) / max_rows; }
inline int64_t row_tile_start(int64_t M, int max_rows, int64_t t) {
  const int64_t tiles = row_tiles(M, max_rows), base = M / tiles, extra = M % tiles;
  return t * base + (t < extra ? t : extra);  // the first `extra` tiles take one row more
}

// Calls f(row0, rows) for each of those tiles, in order.
template <class Fn>
inline void for_row_tiles(int64_t M, int max_rows, Fn&& f) {
  for (int64_t t = 0, tiles = row_tiles(M, max_rows); t < tiles; ++t) {
    const int64_t row0 = row_tile_start(M, max_rows, t);
    f(row0, static_cast<int>(row_tile_start(M, max_rows, t + 1) - row0));
  }
}

}  // namespace fluid_rt
