"""Float32 / bfloat16 CPU matmul against a weight packed once at load
(``torch.ops.fluid_rt.packed_linear``).

Decoding multiplies a few rows (1 token for AR, a block for elastic decoding) by every weight once
per forward, which makes it a stream over the weights. BLAS re-packs the weight on every such call;
``pack_linear_weight`` does it once, into 32-column panels that the kernel reads sequentially,
computing up to 12 rows per loaded vector. The kernel runs on the CPU path in use
(``fluid_rt.cpu_isa()``: avx512, avx2 or portable); the packed layout is the same on every path.
Within a path a row's result does not depend on the other rows of the call, bit for bit. CPU only:
on CUDA, cuBLAS needs no packing.

The packed tensor keeps the weight's shape ``[out_features, in_features]`` (so every size check is
exact), but its memory is in panel order: it is an operand for ``packed_linear`` only (slicing or
reshaping it does not slice or reshape the weight).
"""

from __future__ import annotations

import torch

__all__ = ["pack_linear_weight", "packed_linear", "unpack_linear_weight"]


@torch.library.register_fake("fluid_rt::pack_linear_weight")
def _pack_fake(weight):
    return weight.new_empty(weight.shape)


@torch.library.register_fake("fluid_rt::unpack_linear_weight")
def _unpack_fake(packed):
    return packed.new_empty(packed.shape)


@torch.library.register_fake("fluid_rt::packed_linear")
def _packed_linear_fake(x, packed, bias=None, silu_and_mul=False):
    return x.new_empty((*x.shape[:-1], packed.shape[0]))


def pack_linear_weight(weight: torch.Tensor) -> torch.Tensor:
    """Pack a linear layer's weight for ``packed_linear``.

    Args:
        weight: ``[out_features, in_features]`` float32 or bfloat16 CPU (``nn.Linear``'s layout;
            any strides; in_features even for bfloat16).

    Returns:
        ``[out_features, in_features]`` in weight's dtype, in panel order: panel p (output columns
        ``32 p .. 32 p + 31``, fewer in the last) is ``[in_features, width]`` row-major (bfloat16:
        ``[in_features / 2, width, 2]``, k pairs interleaved per column), at element
        ``32 p * in_features``.
    """
    return torch.ops.fluid_rt.pack_linear_weight(weight)


def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None, silu_and_mul: bool = False
) -> torch.Tensor:
    """``x @ weight.T (+ bias)``, i.e. ``F.linear(x, weight, bias)``, with a packed weight.

    Args:
        x: ``[..., in_features]`` float32 or bfloat16 CPU (packed's dtype); the last dim contiguous and the leading dims
            collapsible to one row stride (a column slice of a wider matrix is fine). With
            ``silu_and_mul``, ``[..., 2 * in_features]`` = ``[gate, up]``, and the rows multiplied
            are ``silu(gate) * up`` (SwiGLU's down projection without materializing its input).
        packed: ``[out_features, in_features]`` from ``pack_linear_weight``.
        bias: optional ``[out_features]`` in x's dtype.
        silu_and_mul: see ``x``.

    Returns:
        ``[..., out_features]`` in x's dtype (a new tensor). Sums run in float32 in k order.
    """
    return torch.ops.fluid_rt.packed_linear(x, packed, bias, bool(silu_and_mul))


def unpack_linear_weight(packed: torch.Tensor) -> torch.Tensor:
    """The ``[out_features, in_features]`` row-major weight back from ``pack_linear_weight`` (one
    pass over it)."""
    return torch.ops.fluid_rt.unpack_linear_weight(packed)
