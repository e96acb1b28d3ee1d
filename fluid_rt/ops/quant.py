"""Quantized-weight CPU matmuls (``torch.ops.fluid_rt.quant_*``): GGUF Q8_0 / Q4_0 / Q4_1 / Q4_K /
Q6_K weights kept in 4-8 bits and multiplied as integers against activations quantized per row
(``csrc/quant/params.h``).

A packed weight is a uint8 tensor ``[ceil(out_features / 8), in_features / 32, block_bytes]`` in
one of four formats (``FORMATS``), built once at load by ``quant_pack`` from integer quants and
float scales (``fluid_rt.qlinear`` does that from GGUF blocks). Its memory is in the kernel's order:
it is an operand for these ops only.
"""

from __future__ import annotations

import torch

__all__ = ["BLOCK_BYTES", "FORMATS", "quant_dequantize_rows", "quant_linear", "quant_pack"]

# format name -> number (params.h QuantFormat): 4-bit or int8 quants, float16 or float32 scales.
FORMATS = {"u4f16": 0, "u4f32": 1, "s8f16": 2, "s8f32x2": 3}
# Bytes of one (8-column group, 32-k block) per format number.
BLOCK_BYTES = {0: 160, 1: 192, 2: 272, 3: 320}


@torch.library.register_fake("fluid_rt::quant_pack")
def _quant_pack_fake(q, d, m, format):
    return q.new_empty(((q.shape[0] + 7) // 8, q.shape[1] // 32, BLOCK_BYTES[format]), dtype=torch.uint8)


@torch.library.register_fake("fluid_rt::quant_dequantize_rows")
def _dequantize_rows_fake(packed, format, out_features, rows):
    return packed.new_empty((*rows.shape, packed.shape[1] * 32), dtype=torch.float32)


@torch.library.register_fake("fluid_rt::quant_linear")
def _quant_linear_fake(
    x,
    packed,
    format,
    out_features,
    bias=None,
    silu_and_mul=False,
    lora_rows=None,
    lora_a_t=None,
    lora_b=None,
    lora_out_parts=(),
):
    return x.new_empty((*x.shape[:-1], out_features))


def quant_pack(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor | None, format: int) -> torch.Tensor:
    """Pack a quantized weight whose row n, column k is ``d[n, k // bs] * q[n, k] (+ m[n, k // 32])``.

    Args:
        q: ``[out_features, in_features]`` (in_features a multiple of 32): uint8 values 0..15 for
            the u4 formats, int8 for the s8 formats.
        d: float32 ``[out_features, in_features / bs]``: bs = 16 for ``s8f32x2``, else 32.
        m: float32 ``[out_features, in_features / 32]`` for the u4 formats, else None.
        format: a ``FORMATS`` value. The float16 formats raise ValueError if a scale is not exactly
            a float16.

    Returns:
        uint8 ``[ceil(out_features / 8), in_features / 32, BLOCK_BYTES[format]]``.
    """
    return torch.ops.fluid_rt.quant_pack(q, d, m, int(format))


def quant_dequantize_rows(
    packed: torch.Tensor, format: int, out_features: int, rows: torch.Tensor
) -> torch.Tensor:
    """Rows ``rows`` (int64, any shape, each in ``[0, out_features)``) of the weight as float32
    ``[*rows.shape, in_features]``: ``d * q (+ m)`` in float32 (the product rounded first, as
    ``gguf``'s dequantization). The embedding lookup of a quantized token table."""
    return torch.ops.fluid_rt.quant_dequantize_rows(packed, int(format), int(out_features), rows)


def quant_linear(
    x: torch.Tensor,
    packed: torch.Tensor,
    format: int,
    out_features: int,
    bias: torch.Tensor | None = None,
    silu_and_mul: bool = False,
    lora: tuple | None = None,
) -> torch.Tensor:
    """``x @ W.T (+ bias)`` with W packed by ``quant_pack``, plus optionally the gated adapter's
    LoRA delta at some rows.

    Args:
        x: ``[..., in_features]`` float32 or bfloat16 CPU, last dim contiguous, leading dims
            collapsible to one row stride. With ``silu_and_mul``: ``[..., 2 * in_features]`` =
            ``[gate, up]``, and the rows multiplied are ``silu(gate) * up``.
        packed, format, out_features: the weight.
        bias: optional ``[out_features]`` in x's dtype.
        lora: optional ``(rows, a_t, b_t, out_parts)``: then ``ops.gated_lora_(y, x, rows, a_t,
            b_t, silu_and_mul, out_parts)`` is applied to the result in the same op call (bitwise
            the two calls; a decode step makes ~120 such calls per forward, and each op call costs
            a few microseconds of dispatch). Errors in them name ``gated_lora_``'s arguments.

    Returns:
        ``[..., out_features]`` in x's dtype. x is quantized per row and block of 32 to int8
        (scale ``max|x| / 127``); each block's integer dot product is scaled and summed in float32
        in k order. A row's output does not depend on the other rows of the call, bit for bit.
    """
    rows, a_t, b_t, out_parts = lora if lora is not None else (None, None, None, ())
    return torch.ops.fluid_rt.quant_linear(
        x, packed, int(format), int(out_features), bias, bool(silu_and_mul), rows, a_t, b_t, list(out_parts)
    )
