#include <atomic>
#include <cstdlib>
#include <cstring>

#include "common/cpu_isa.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fluid_rt {
namespace {

// __builtin_cpu_supports takes a string literal only.
#define has(feature) __builtin_cpu_supports(feature)

bool cpu_runs(CpuIsa isa) {
#if defined(__x86_64__)
  switch (isa) {
    case CpuIsa::kAvx512:
      return has("avx512f") && has("avx512bw") && has("avx512vl") && has("avx512dq") && has("fma") &&
             has("f16c") && has("avx2");
    case CpuIsa::kAvx2: return has("avx2") && has("fma") && has("f16c");
    default: return true;
  }
#else
  return isa == CpuIsa::kPortable;
#endif
}

CpuIsa initial_isa() {
  const char* env = std::getenv("FLUID_RT_CPU_ISA");
  CpuIsa want;
  // An unknown or unsupported name is reported by the Python package at import (it reads the same
  // variable and raises); here it just falls back to the best path.
  if (env != nullptr && env[0] != '\0' && parse_cpu_isa(env, &want) && cpu_isa_supported(want)) return want;
  return cpu_isa_best();
}

std::atomic<int>& active_isa() {
  static std::atomic<int> isa{static_cast<int>(initial_isa())};
  return isa;
}

}  // namespace

const char* cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

bool parse_cpu_isa(const char* name, CpuIsa* out) {
  for (int i = 0; i < kNumCpuIsas; ++i) {
    const auto isa = static_cast<CpuIsa>(i);
    if (std::strcmp(name, cpu_isa_name(isa)) == 0) {
      *out = isa;
      return true;
    }
  }
  return false;
}

bool cpu_isa_compiled(CpuIsa isa) {
#if defined(__x86_64__)
  return static_cast<int>(isa) >= 0 && static_cast<int>(isa) < kNumCpuIsas;
#else
  return isa == CpuIsa::kPortable;
#endif
}

bool cpu_isa_supported(CpuIsa isa) {
  static const bool supported[kNumCpuIsas] = {
      cpu_isa_compiled(CpuIsa::kPortable) && cpu_runs(CpuIsa::kPortable),
      cpu_isa_compiled(CpuIsa::kAvx2) && cpu_runs(CpuIsa::kAvx2),
      cpu_isa_compiled(CpuIsa::kAvx512) && cpu_runs(CpuIsa::kAvx512)};
  const int i = static_cast<int>(isa);
  return i >= 0 && i < kNumCpuIsas && supported[i];
}

CpuIsa cpu_isa_best() {
  for (int i = kNumCpuIsas - 1; i > 0; --i)
    if (cpu_isa_supported(static_cast<CpuIsa>(i))) return static_cast<CpuIsa>(i);
  return CpuIsa::kPortable;
}

CpuIsa cpu_isa() { return static_cast<CpuIsa>(active_isa().load(std::memory_order_relaxed)); }

bool set_cpu_isa(CpuIsa isa) {
  if (!cpu_isa_supported(isa)) return false;
  active_isa().store(static_cast<int>(isa), std::memory_order_relaxed);
  return true;
}

bool cpu_has_avx512_bf16() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_supported(CpuIsa::kAvx512) && has("avx512bf16");
  return yes;
#else
  return false;
#endif
}

bool cpu_has_avx512_vnni() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_supported(CpuIsa::kAvx512) && has("avx512vnni");
  return yes;
#else
  return false;
#endif
}

bool cpu_has_avx_vnni() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_supported(CpuIsa::kAvx2) && has("avxvnni");
  return yes;
#else
  return false;
#endif
}

namespace {

// Linux hands out AMX's 8 KiB of tile state only to processes that ask (since 5.16); without the
// grant the first tile instruction kills the process with SIGILL.
bool request_amx_tiles() {
#if defined(__linux__) && defined(__x86_64__)
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// The tile state, asked for once (only on CPUs with AVX-512 and AMX tiles).
bool amx_tiles() {
#if defined(__x86_64__)
  static const bool yes = cpu_isa_supported(CpuIsa::kAvx512) && has("amx-tile") && request_amx_tiles();
  return yes;
#else
  return false;
#endif
}

std::atomic<bool>& amx_switch() {
  static std::atomic<bool> on{[] {
    const char* env = std::getenv("FLUID_RT_CPU_AMX");
    return !(env != nullptr && std::strcmp(env, "0") == 0);
  }()};
  return on;
}

}  // namespace

bool cpu_has_amx_int8() {
#if defined(__x86_64__)
  static const bool yes = amx_tiles() && has("amx-int8");
  return yes;
#else
  return false;
#endif
}

bool cpu_has_amx_bf16() {
#if defined(__x86_64__)
  static const bool yes = amx_tiles() && has("amx-bf16");
  return yes;
#else
  return false;
#endif
}

// The switch first: with the tiles off, the process never asks for their state (a grant makes Linux
// refuse later sigaltstack calls whose stack is too small for it).
bool cpu_amx_enabled() { return amx_switch().load(std::memory_order_relaxed) && amx_tiles(); }

bool set_cpu_amx(bool on) {
  if (on && !amx_tiles()) return false;
  amx_switch().store(on, std::memory_order_relaxed);
  return true;
}

int cpu_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

}  // namespace fluid_rt
