"""fluid_rt: an inference runtime for FLUID-style elastic-horizon language models.

Importing the package loads the compiled extension ``fluid_rt._C``, which registers the kernels as
``torch.ops.fluid_rt.*``; ``fluid_rt.ops`` holds their typed Python wrappers.
"""

from __future__ import annotations

try:
    from fluid_rt import _C  # noqa: F401  (registers torch.ops.fluid_rt.*)
except ImportError as err:  # pragma: no cover - only hit on a broken install
    raise ImportError(
        "fluid_rt._C is missing or does not load: build it with `pip install --no-build-isolation .` "
        f"(or see DEVELOPERS.md for an in-place build). Original error: {err}"
    ) from err

from fluid_rt.cpu_isa import cpu_isa, use_cpu_isa  # noqa: E402  (validates FLUID_RT_CPU_ISA)
from fluid_rt import ops  # noqa: E402
from fluid_rt.decode import DecodeConfig, Decoder, Generation  # noqa: E402
from fluid_rt.loader import LoadedModel, load_model  # noqa: E402

__version__ = _C.__version__


def build_info() -> dict:
    """How the extension was built: version, whether CUDA kernels are in, their archs, and whether
    the CUDA kernels' CPU emulation (``torch.ops.fluid_rt_emu``, FLUID_RT_CUDA_EMU=1) is in."""
    return {
        "version": _C.__version__,
        "with_cuda": bool(_C.with_cuda),
        "cuda_archs": list(_C.cuda_archs),
        "cuda_emu": bool(getattr(_C, "cuda_emu", False)),
        "cpu_avx512_compiled": bool(_C.cpu_avx512_compiled),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isas": list(_C.cpu_isas_compiled()),
        "cpu_isas_supported": list(_C.cpu_isas_supported()),
        "cpu_features": dict(_C.cpu_features()),
    }


__all__ = ["ops", "build_info", "cpu_isa", "use_cpu_isa", "load_model", "LoadedModel", "Decoder", "DecodeConfig",
           "Generation", "__version__"]
