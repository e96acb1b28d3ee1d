// The Python module fluid_rt._C. Importing it runs the static TORCH_LIBRARY registrations of every
// bindings/<family>.cpp; the module itself only reports how it was built.
#include <torch/extension.h>

#include "common.h"
#include "common/cpu_isa.h"

TORCH_LIBRARY(fluid_rt, m) {
  // Schemas are added per family with TORCH_LIBRARY_FRAGMENT in bindings/<family>.cpp.
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fluid_rt kernels (CPU + CUDA), registered as torch.ops.fluid_rt.*";
  m.attr("__version__") = FLUID_RT_VERSION;
#ifdef FLUID_RT_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
#ifdef FLUID_RT_CUDA_EMU
  m.attr("cuda_emu") = true;  // torch.ops.fluid_rt_emu.*: the CUDA kernels under the CPU emulator
#else
  m.attr("cuda_emu") = false;
#endif
  std::string archs = FLUID_RT_CUDA_ARCHS;
  pybind11::list arch_list;
  size_t start = 0;
  while (start < archs.size()) {
    size_t comma = archs.find(',', start);
    if (comma == std::string::npos) comma = archs.size();
    if (comma > start) arch_list.append(archs.substr(start, comma - start));
    start = comma + 1;
  }
  m.attr("cuda_archs") = arch_list;
  m.attr("torch_version") = TORCH_VERSION_MAJOR * 100 + TORCH_VERSION_MINOR;
  m.def("cpu_has_avx512_bf16", &fluid_rt::cpu_has_avx512_bf16,
        "Whether this CPU runs packed_linear's bfloat16 kernel (AVX512-BF16) rather than its portable path");
  // CPU paths (csrc/common/cpu_isa.h): names of the compiled, the supported and the active one.
  m.def("cpu_isas_compiled", [] {
    pybind11::list out;
    for (int i = 0; i < fluid_rt::kNumCpuIsas; ++i)
      if (fluid_rt::cpu_isa_compiled(static_cast<fluid_rt::CpuIsa>(i)))
        out.append(fluid_rt::cpu_isa_name(static_cast<fluid_rt::CpuIsa>(i)));
    return out;
  });
  m.def("cpu_isas_supported", [] {
    pybind11::list out;
    for (int i = 0; i < fluid_rt::kNumCpuIsas; ++i)
      if (fluid_rt::cpu_isa_supported(static_cast<fluid_rt::CpuIsa>(i)))
        out.append(fluid_rt::cpu_isa_name(static_cast<fluid_rt::CpuIsa>(i)));
    return out;
  });
  m.def("cpu_isa", [] { return std::string(fluid_rt::cpu_isa_name(fluid_rt::cpu_isa())); });
  m.def(
      "set_cpu_isa",
      [](const std::string& name) {
        fluid_rt::CpuIsa isa;
        if (!fluid_rt::parse_cpu_isa(name.c_str(), &isa))
          throw pybind11::value_error("unknown CPU path '" + name + "' (portable, avx2 or avx512)");
        if (!fluid_rt::set_cpu_isa(isa))
          throw pybind11::value_error("CPU path '" + name + "' is not supported by this CPU or build");
      },
      "Switch the CPU kernels to another path (raises ValueError when unsupported)");
  m.def("cpu_features", [] {
    pybind11::dict d;
    d["avx512_bf16"] = fluid_rt::cpu_has_avx512_bf16();
    d["avx512_vnni"] = fluid_rt::cpu_has_avx512_vnni();
    d["avx_vnni"] = fluid_rt::cpu_has_avx_vnni();
    d["amx_bf16"] = fluid_rt::cpu_has_amx_bf16();
    d["amx_int8"] = fluid_rt::cpu_has_amx_int8();
    return d;
  });
  m.def("cpu_amx", &fluid_rt::cpu_amx_enabled, "Whether the kernels use AMX tiles where they would");
  m.def(
      "set_cpu_amx",
      [](bool on) {
        if (!fluid_rt::set_cpu_amx(on))
          throw pybind11::value_error("this CPU (or its OS) gives this process no AMX tiles");
      },
      "Switch AMX use on or off (raises ValueError when switching on without AMX)");
}
