// Which vector path the CPU kernels run: chosen once from CPUID (or FLUID_RT_CPU_ISA), switchable
// in-process for tests and benchmarks.
//
// Kernels that differ per ISA are written once, in a file named `*.isa.cpp`; CMake compiles each
// such file once per path with that path's target flags, inside the namespace FLUID_RT_ISA_NS
// (`isa_portable`, `isa_avx2`, `isa_avx512`) and with FLUID_RT_ISA set to the path's CpuIsa value
// (see csrc/common/isa.h). A family's plain `cpu.cpp` then picks the copy with `cpu_isa()`.
#pragma once

namespace fluid_rt {

// Ordered: a path needs everything the ones below it need.
enum class CpuIsa : int {
  kPortable = 0,  // no intrinsics: plain C++ the compiler vectorizes (any architecture)
  kAvx2 = 1,      // x86-64 AVX2 + FMA + F16C
  kAvx512 = 2,    // x86-64 AVX-512 F/BW/VL/DQ + FMA + F16C
};
constexpr int kNumCpuIsas = 3;

// "portable", "avx2", "avx512".
const char* cpu_isa_name(CpuIsa isa);

// Whether this build holds kernels for `isa` (x86-64 builds hold all three, others portable only).
bool cpu_isa_compiled(CpuIsa isa);

// Whether `isa` is compiled in and this CPU (and OS) can run it.
bool cpu_isa_supported(CpuIsa isa);

// The widest supported path.
CpuIsa cpu_isa_best();

// The path in use. Starts as FLUID_RT_CPU_ISA when that names a supported path, else the best.
CpuIsa cpu_isa();

// Switch the path in use. Returns false (and changes nothing) when `isa` is not supported.
bool set_cpu_isa(CpuIsa isa);

// Parse "portable" / "avx2" / "avx512"; returns false for any other name.
bool parse_cpu_isa(const char* name, CpuIsa* out);

// Extra features used inside the avx512 path where they pay (never required by it).
bool cpu_has_avx512_bf16();  // vdpbf16ps
bool cpu_has_avx512_vnni();  // vpdpbusd
bool cpu_has_avx_vnni();     // the VEX form of vpdpbusd (AVX2 machines such as Zen 4/5, Alder Lake)
// AMX tiles that this process may use (csrc/common/amx.h): the CPU has them and Linux granted the
// tile state (arch_prctl ARCH_REQ_XCOMP_PERM, asked once). The avx512 path runs on them the
// quantized matmul's calls of a few rows or more (AMX-INT8, csrc/quant/amx.h: bit for bit its
// AVX512-VNNI code) and every bfloat16 packed_linear call (AMX-BF16, csrc/linear/amx.h).
bool cpu_has_amx_int8();
bool cpu_has_amx_bf16();
// Whether the kernels use AMX where they would: the tiles are granted and not switched off
// (FLUID_RT_CPU_AMX=0 at start, or set_cpu_amx(false), e.g. to measure or test the code without).
bool cpu_amx_enabled();
// Switch AMX use on or off; returns false (and changes nothing) when switching on without tiles.
bool set_cpu_amx(bool on);

// Number of OpenMP threads the CPU kernels may use (1 without OpenMP).
int cpu_max_threads();

}  // namespace fluid_rt
