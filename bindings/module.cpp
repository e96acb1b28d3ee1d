// The Python module fluid_rt._C. Importing it runs the static TORCH_LIBRARY registrations of every
// bindings/<family>.cpp; the module itself only reports how it was built.
#include <torch/extension.h>

#include "common.h"
#include "common/cpu_features.h"

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
#ifdef FLUID_RT_HAS_AVX512
  m.attr("cpu_avx512_compiled") = true;
#else
  m.attr("cpu_avx512_compiled") = false;
#endif
}
