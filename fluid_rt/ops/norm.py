"""RMSNorm fused with the residual add before it (``torch.ops.fluid_rt.rms_norm``)."""

from __future__ import annotations

import torch

from fluid_rt.ops._backend import op_library

__all__ = ["rms_norm"]


@torch.library.register_fake("fluid_rt::rms_norm")
def _rms_norm_fake(x, weight, eps, add=None):
    return torch.empty_like(x)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, add: torch.Tensor | None = None
) -> torch.Tensor:
    """``weight * to_dtype(x * rsqrt(mean(x**2, -1) + eps))`` per row, float32 math (HF Llama's
    order: the normed value is rounded to x's dtype before the weight multiplies it).

    Args:
        x: ``[..., H]`` float32/bfloat16/float16, contiguous. With ``add`` it is updated in place
            to ``x + add`` first (the residual stream), and that sum is normalized.
        weight: ``[H]``, x's dtype.
        eps: added to the mean square.
        add: optional ``[..., H]`` like x (last dim contiguous, rows at one stride).

    Returns:
        ``[..., H]`` in x's dtype (a new tensor).
    """
    return op_library().rms_norm(x, weight, float(eps), add)
