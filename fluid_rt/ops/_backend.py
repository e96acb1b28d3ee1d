"""Which op library the wrappers of ``fluid_rt.ops`` call: ``torch.ops.fluid_rt`` (always), or, inside
``cuda_emulation()``, ``torch.ops.fluid_rt_emu``: the CUDA kernels run on CPU tensors by the
emulator of ``csrc/emu`` (a build with ``FLUID_RT_CUDA_EMU=1``; for tests, see DEVELOPERS.md)."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["cuda_emulation", "op_library"]

# A plain module global (torch.compile reads and guards it like any other); a test switch, not a
# per-thread setting.
_emulate = False


def op_library():
    """``torch.ops.fluid_rt``, or ``torch.ops.fluid_rt_emu`` inside ``cuda_emulation()``."""
    return torch.ops.fluid_rt_emu if _emulate else torch.ops.fluid_rt


@contextlib.contextmanager
def cuda_emulation(num_sms: int = 4, seed: int = 1, orders: str = "forward,reverse,random"):
    """Route the wrappers of the CUDA op families (attention, entropy, norm, commit) to the emulated
    CUDA kernels, for CPU tensors. ``num_sms`` is the SM count the launch planners see (small, so
    small shapes take the split paths); every launch runs once per thread order in ``orders`` and
    raises when the results differ (``seed`` drives the random order)."""
    global _emulate
    import fluid_rt

    if not fluid_rt.build_info()["cuda_emu"]:
        raise RuntimeError("this build of fluid_rt has no CUDA emulation (rebuild with FLUID_RT_CUDA_EMU=1)")
    before = _emulate
    torch.ops.fluid_rt_emu.configure(num_sms, seed, orders)
    _emulate = True
    try:
        yield
    finally:
        _emulate = before
