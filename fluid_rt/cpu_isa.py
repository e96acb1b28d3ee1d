"""Which vector path the CPU kernels run (csrc/common/cpu_isa.h).

The path is chosen once, at import: ``FLUID_RT_CPU_ISA=portable|avx2|avx512`` when set, else the
widest one this CPU supports. ``use_cpu_isa`` switches it for a block of code (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from fluid_rt import _C

ENV = "FLUID_RT_CPU_ISA"
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


def _check_env() -> None:
    wanted = os.environ.get(ENV, "").strip()
    if wanted:
        try:
            set_cpu_isa(wanted)
        except ValueError as err:
            raise ImportError(f"{ENV}={wanted}: {err}") from None


_check_env()
