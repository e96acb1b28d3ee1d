"""Rotary position embedding in place (``torch.ops.fluid_rt.rope_``), CPU.

One pass instead of torch's slice / cat / mul / addcmul per layer: on the CPU every op is a
dispatch, and decoding runs few tokens through many layers. On CUDA the model keeps torch's ops,
which its captured CUDA graph replays without launch overhead.
"""

from __future__ import annotations

import torch

__all__ = ["rope_"]


@torch.library.register_fake("fluid_rt::rope_")
def _rope_fake(x, cos, sin):
    return None


def rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """``x <- x * cos + swap_halves(x) * sin`` in place: HF Llama's ``q * cos + rotate_half(q) *
    sin`` (rotate-half layout) with sin's first half pre-negated, as ``fluid_rt.model.rope_tables``
    builds it. Each product and the sum are rounded to x's dtype, as HF's separate ops do.

    Args:
        x: ``[..., heads, head_dim]`` float32/bfloat16/float16 CPU; each row's heads contiguous
            (e.g. the q and k heads of a fused qkv projection), rows at one stride.
        cos, sin: ``[..., head_dim]`` (x's leading dims), x's dtype, contiguous.
    """
    torch.ops.fluid_rt.rope_(x, cos, sin)
