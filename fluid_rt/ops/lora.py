"""The gated FLUID adapter's LoRA delta at chosen rows, in place (``torch.ops.fluid_rt.gated_lora_``),
CPU.

One call per adapted linear instead of torch's index_select, two small matmuls and index_add_: a
decode step has a few mask rows per layer, where each of those ops costs more in dispatch than in
math (csrc/lora/params.h).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["gated_lora_"]


@torch.library.register_fake("fluid_rt::gated_lora_")
def _gated_lora_fake(y, x, rows, a_t, b_t, silu_and_mul=False, out_parts=()):
    return None


def gated_lora_(
    y: torch.Tensor,
    x: torch.Tensor,
    rows: torch.Tensor,
    a_t: torch.Tensor,
    b_t: torch.Tensor,
    silu_and_mul: bool = False,
    out_parts: Sequence[int] = (),
) -> None:
    """``y[r] += (x'[r] @ a_t) @ b_t`` for each row index r in ``rows``; other rows untouched.

    Args:
        y: ``[..., out]`` float32 or bfloat16 CPU, the linear's output; last dim contiguous, the
            leading dims at one row stride. Written in place.
        x: ``[..., in]`` (y's leading dims and dtype), the linear's input; with ``silu_and_mul``
            ``[..., 2 * in]`` = ``[gate, up]`` and x' = ``silu(gate) * up``.
        rows: ``[n]`` int64, distinct indices into the flattened leading dims.
        a_t: ``[in, rank]`` float32 or bfloat16, contiguous (LoRA's A transposed).
        b_t: ``[rank / P, out]``, a_t's dtype, contiguous (B transposed, the LoRA scale folded in).
        out_parts: the output sizes of a fused projection's P parts (q/k/v, gate/up), summing to
            out. Part q's columns take ``h[:, q rank / P : (q + 1) rank / P]`` of
            ``h = x' @ a_t``: b_t holds the diagonal blocks of the fused layer's block-diagonal
            B, side by side. Empty: one part.

    Float32 math; each updated row of y is rounded to its dtype once.
    """
    torch.ops.fluid_rt.gated_lora_(y, x, rows, a_t, b_t, bool(silu_and_mul), [int(n) for n in out_parts])
