"""pip entry point: builds fluid_rt._C by driving CMakeLists.txt (the one build description).

Environment knobs, passed through to CMake:
  FLUID_RT_CUDA=0|1|auto   build the CUDA kernels (auto: when torch has CUDA and nvcc is found)
  TORCH_CUDA_ARCH_LIST     CUDA archs, e.g. "8.0;9.0" or "9.0a" (default 8.0 and 9.0)
  CUDA_HOME                the CUDA toolkit root (its bin/nvcc is used)
  FLUID_RT_NATIVE=1        compile the CPU kernels with -march=native
  FLUID_RT_CUDA_EMU=1      also build the CUDA kernels' CPU emulation (torch.ops.fluid_rt_emu; CI)
  MAX_JOBS                 parallel compile jobs
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import torch  # the build needs the torch it will run against (--no-build-isolation)

        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        args = [
            f"-S{ROOT}",
            f"-B{build_dir}",
            "-GNinja",
            f"-DPython3_EXECUTABLE={sys.executable}",
            f"-DFLUID_RT_OUTPUT_DIR={out_dir}",
            f"-DFLUID_RT_CUDA={os.environ.get('FLUID_RT_CUDA', 'auto')}",
            f"-DFLUID_RT_NATIVE={'ON' if os.environ.get('FLUID_RT_NATIVE') == '1' else 'OFF'}",
            f"-DFLUID_RT_CUDA_EMU={'ON' if os.environ.get('FLUID_RT_CUDA_EMU') == '1' else 'OFF'}",
            f"-DFLUID_RT_VERSION={self.distribution.get_version()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
        if cuda_home:
            args.append(f"-DCMAKE_CUDA_COMPILER={Path(cuda_home) / 'bin' / 'nvcc'}")
            args.append(f"-DCUDAToolkit_ROOT={cuda_home}")
        print(f"fluid_rt: building against torch {torch.__version__} (cuda: {torch.version.cuda})")
        subprocess.check_call(["cmake", *args])
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.check_call(["cmake", "--build", str(build_dir), "--parallel", jobs])


setup(
    ext_modules=[CMakeExtension("fluid_rt._C")],
    cmdclass={"build_ext": CMakeBuild},
)
