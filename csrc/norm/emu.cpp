// rms_norm's CUDA kernel compiled as C++ for the emulator (csrc/emu/launchers.h).
#include "emu/launchers.h"
#include "norm/cuda_kernels.cuh"

namespace fluid_rt {
namespace emu {

void rms_norm(const RmsNormParams& p) {
  if (rms_norm_launch(p, nullptr) != 0) throw EmuError("emu: rms_norm: launch refused");
}

}  // namespace emu
}  // namespace fluid_rt
