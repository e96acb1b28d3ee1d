"""Which vector path the CPU kernels run (csrc/common/cpu_isa.h).

The path is chosen once, at import: ``FLUID_RT_CPU_ISA=portable|avx2|avx512`` when set, else the
widest one this CPU supports. ``use_cpu_isa`` switches it for a block of code (tests, benchmarks).

Inside the avx512 path, a CPU with AMX tiles (Intel Sapphire Rapids and later) runs the quantized
matmul's calls of 8+ rows (AMX-INT8, bit for bit the AVX512-VNNI code's results) and every bfloat16
packed_linear call (AMX-BF16) on them; ``FLUID_RT_CPU_AMX=0`` at start, or ``use_amx(False)``,
keeps them off.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from fluid_rt import _C

ENV = "FLUID_RT_CPU_ISA"
AMX_ENV = "FLUID_RT_CPU_AMX"
ISAS = ("portable", "avx2", "avx512")


def cpu_isa() -> str:
    """The CPU path in use: "portable", "avx2" or "avx512"."""
    return _C.cpu_isa()


def supported_cpu_isas() -> list[str]:
    """The paths compiled into this build that this CPU can run, narrowest first."""
    return list(_C.cpu_isas_supported())


def set_cpu_isa(name: str) -> None:
    """Switch every CPU kernel to path `name`; ValueError names the paths this machine has."""
    if name not in ISAS:
        raise ValueError(f"unknown CPU path {name!r}: choose one of {', '.join(ISAS)}")
    if name not in supported_cpu_isas():
        raise ValueError(
            f"CPU path {name!r} is not available here: this CPU and build support "
            f"{', '.join(supported_cpu_isas())}"
        )
    _C.set_cpu_isa(name)


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[None]:
    """Run the block with the CPU kernels on path `name`, then restore the previous path."""
    previous = cpu_isa()
    set_cpu_isa(name)
    try:
        yield
    finally:
        _C.set_cpu_isa(previous)


def amx_enabled() -> bool:
    """Whether the kernels use AMX tiles where they would (this CPU has them, the OS granted them,
    and they are not switched off)."""
    return bool(_C.cpu_amx())


@contextlib.contextmanager
def use_amx(on: bool) -> Iterator[None]:
    """Run the block with AMX tiles on or off, then restore the previous setting; asking for them
    on a CPU without AMX tiles raises ValueError."""
    previous = amx_enabled()
    _C.set_cpu_amx(bool(on))
    try:
        yield
    finally:
        _C.set_cpu_amx(previous)


def _check_env() -> None:
    wanted = os.environ.get(ENV, "").strip()
    if wanted:
        try:
            set_cpu_isa(wanted)
        except ValueError as err:
            raise ImportError(f"{ENV}={wanted}: {err}") from None
    amx = os.environ.get(AMX_ENV, "").strip()
    if amx not in ("", "0", "1"):
        raise ImportError(f"{AMX_ENV}={amx}: expected 0 (AMX tiles off) or 1 (on, the default where present)")
    features = _C.cpu_features()
    if amx == "1" and not (features["amx_int8"] or features["amx_bf16"]):
        raise ImportError(f"{AMX_ENV}=1: this CPU (or its OS) gives this process no AMX tiles")
    if amx == "0":
        _C.set_cpu_amx(False)


_check_env()
