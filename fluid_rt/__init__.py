"""fluid_rt: an inference runtime for FLUID-style elastic-horizon language models.

Importing the package loads the compiled extension ``fluid_rt._C``, which registers the kernels as
``torch.ops.fluid_rt.*``; ``fluid_rt.ops`` holds their typed Python wrappers.
"""

from __future__ import annotations

import os as _os
import sys as _sys


def _source_tree_message(err: Exception) -> str:
    """Why ``fluid_rt._C`` did not load, in words that say what to do. The common case: Python
    started in a source checkout, whose ``fluid_rt/`` (no compiled extension in it) shadows the
    installed package, since the current directory comes first on ``sys.path``."""
    here = _os.path.dirname(_os.path.abspath(__file__))
    root = _os.path.dirname(here)
    built = any(n.startswith("_C") and n.endswith((".so", ".pyd")) for n in _os.listdir(here))
    if not built and _os.path.isdir(_os.path.join(root, "csrc")):
        return (
            f"fluid_rt is being imported from its source tree {here}, which has no compiled "
            "extension (fluid_rt/_C*.so): Python puts the current directory (or the "
            "script's) first on sys.path, so the source tree hides any installed fluid_rt. "
            f"Run Python from another directory, or build in place in {root} (DEVELOPERS.md: "
            "cmake -S . -B build/dev -G Ninja && ninja -C build/dev). "
            f"Original error: {err}"
        )
    return (
        "fluid_rt._C is missing or does not load: build it with `pip install "
        "--no-build-isolation .` (or see DEVELOPERS.md for an in-place build). "
        f"Original error: {err}"
    )


def _started_as_command() -> bool:
    return _os.path.basename(_sys.argv[0] if _sys.argv else "") == "fluid-rt"


try:
    try:
        from fluid_rt import _C  # (registers torch.ops.fluid_rt.*)
    except ImportError as err:  # pragma: no cover - a broken install, or a source tree on the path
        raise ImportError(_source_tree_message(err)) from err

    from fluid_rt import ops
    from fluid_rt.cpu_isa import cpu_isa, use_cpu_isa  # (validates FLUID_RT_CPU_ISA)
    from fluid_rt.decode import DecodeConfig, Decoder, Generation
    from fluid_rt.loader import LoadedModel, load_model
except KeyboardInterrupt:  # Ctrl-C while torch loads: the command exits as it does later on
    if _started_as_command():
        raise SystemExit(130) from None
    raise

__version__ = _C.__version__


def build_info() -> dict:
    """How the extension was built: version, whether CUDA kernels are in, their archs, and whether
    the CUDA kernels' CPU emulation (``torch.ops.fluid_rt_emu``, FLUID_RT_CUDA_EMU=1) is in."""
    return {
        "version": _C.__version__,
        "with_cuda": bool(_C.with_cuda),
        "cuda_archs": list(_C.cuda_archs),
        "cuda_emu": bool(getattr(_C, "cuda_emu", False)),
        "cpu_isa": _C.cpu_isa(),
        "cpu_isas": list(_C.cpu_isas_compiled()),
        "cpu_isas_supported": list(_C.cpu_isas_supported()),
        "cpu_features": dict(_C.cpu_features()),
        "cpu_amx": bool(_C.cpu_amx()),
    }


__all__ = [
    "ops",
    "build_info",
    "cpu_isa",
    "use_cpu_isa",
    "load_model",
    "LoadedModel",
    "Decoder",
    "DecodeConfig",
    "Generation",
    "__version__",
]
