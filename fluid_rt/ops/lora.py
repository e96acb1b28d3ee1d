"""The gated FLUID adapter's LoRA delta at chosen rows, in place (``torch.ops.fluid_rt.gated_lora_``),
CPU.

One call per adapted linear instead of torch's index_select, two small matmuls and index_add_: a
decode step has a few mask rows per layer, where each of those ops costs more in dispatch than in
math (csrc/lora/params.h).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["LORA_PIECE", "gated_lora_", "lora_pack_b"]

LORA_PIECE = 64  # columns per piece of the packed B (csrc/lora/params.h kLoraPiece)


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
        b_t: B transposed (the LoRA scale folded in), a_t's dtype, packed by ``lora_pack_b``.
        out_parts: the output sizes of a fused projection's P parts (q/k/v, gate/up), summing to
            out. Part q's columns take ``h[:, q rank / P : (q + 1) rank / P]`` of
            ``h = x' @ a_t``. Empty: one part.

    Float32 math; each updated row of y is rounded to its dtype once.
    """
    torch.ops.fluid_rt.gated_lora_(y, x, rows, a_t, b_t, bool(silu_and_mul), [int(n) for n in out_parts])


def lora_pack_b(b_t: torch.Tensor, out_parts: Sequence[int] = ()) -> torch.Tensor:
    """``gated_lora_``'s B operand from ``b_t [rank / P, out]``: the diagonal blocks of a fused
    layer's block-diagonal B^T side by side (part q's columns are its block).

    Each part's columns are cut into pieces of ``LORA_PIECE`` (the last one zero-padded), and a
    piece's ``rank / P`` rows are stored together: ``[pieces, rank / P, LORA_PIECE]``, contiguous,
    b_t's dtype. The kernel then reads B in one sequential stream (B's natural rows are a whole
    output wide, and a column block of them would jump a page per row).
    """
    if b_t.dim() != 2:
        raise ValueError(f"b_t: expected [rank / parts, out], got shape {tuple(b_t.shape)}")
    sizes = [int(n) for n in out_parts] or [b_t.shape[1]]
    if any(n <= 0 for n in sizes) or sum(sizes) != b_t.shape[1]:
        raise ValueError(f"out_parts {sizes} do not split b_t's {b_t.shape[1]} columns")
    pieces, c0 = [], 0
    for n in sizes:
        part = b_t[:, c0 : c0 + n]
        padded = torch.nn.functional.pad(part, (0, -n % LORA_PIECE))
        pieces.append(padded.unflatten(1, (-1, LORA_PIECE)).transpose(0, 1))
        c0 += n
    return torch.cat(pieces).contiguous()
