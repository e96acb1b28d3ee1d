"""``QuantLinear``: a linear layer whose weight stays in a GGUF file's 4-8 bit blocks on the CPU.

Same interface as ``fluid_rt.model.Linear`` (``__call__(x)``, ``silu_and_mul(gate_up)``,
``out_features``), plus ``rows(ids)``, the embedding lookup of a quantized token table (SmolLM2
ties it to the LM head, so one packed copy serves both). The weight is repacked once at load
(``ops.quant_pack``) and multiplied by ``ops.quant_linear``: activations quantized to int8 per row
and block of 32, integer dot products, float32 sums. A row's output never depends on the other
rows of the call, so quantized elastic decoding stays token-identical to quantized AR decoding.
"""

from __future__ import annotations

import torch

from fluid_rt import ops
from fluid_rt.weights.gguf_quant import QuantWeight, decode_blocks

__all__ = ["QuantLinear", "QuantWeight"]


def _pack(qtype: str, raw, cols: int):
    """(format number, packed, rows) of one same-type segment."""
    name, q, d, m = decode_blocks(qtype, raw, cols)
    fmt = ops.FORMATS[name]
    try:
        return fmt, ops.quant_pack(q, d, m, fmt), q.shape[0]
    except ValueError:
        if name != "u4f16":
            raise
        # Q4_0's m = -8 d leaves float16's range for |d| > 8188: the float32-scale format holds it.
        return ops.FORMATS["u4f32"], ops.quant_pack(q, d, m, ops.FORMATS["u4f32"]), q.shape[0]


class QuantLinear:
    """``y = x @ weight.T (+ bias)`` for a ``QuantWeight`` ``[out, in]``; ``bias`` ``[out]`` in the
    model's dtype or None. x: float32 or bfloat16 CPU."""

    __slots__ = ("bias", "in_features", "out_features", "parts")

    def __init__(self, weight: QuantWeight, bias: torch.Tensor | None = None):
        self.out_features, self.in_features = weight.shape
        self.bias = bias
        self.parts = [_pack(qtype, raw, weight.cols) for qtype, raw in weight.segments]

    def _run(self, x: torch.Tensor, silu_and_mul: bool, lora: tuple | None) -> torch.Tensor:
        if len(self.parts) == 1:
            fmt, packed, n = self.parts[0]
            return ops.quant_linear(x, packed, fmt, n, self.bias, silu_and_mul, lora)
        outs, start = [], 0
        for fmt, packed, n in self.parts:  # mixed types (fused q/k/v of a K-quant file)
            bias = None if self.bias is None else self.bias[start : start + n]
            outs.append(ops.quant_linear(x, packed, fmt, n, bias, silu_and_mul))
            start += n
        y = torch.cat(outs, dim=-1)
        if lora is not None:
            rows, a_t, b_t, out_parts = lora
            ops.gated_lora_(y, x, rows, a_t, b_t, silu_and_mul, out_parts)
        return y

    def __call__(self, x: torch.Tensor, lora: tuple | None = None) -> torch.Tensor:
        """``x [..., in]`` -> ``[..., out]`` in x's dtype; ``lora``: the gated adapter's delta
        (``ops.quant_linear``)."""
        return self._run(x, False, lora)

    def silu_and_mul(self, gate_up: torch.Tensor, lora: tuple | None = None) -> torch.Tensor:
        """``self(silu(gate) * up)`` for ``gate_up [..., 2 * in]`` = ``[gate, up]``, the product
        formed while the rows are quantized (never materialized)."""
        return self._run(gate_up, True, lora)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """float32 ``[*ids.shape, in]``: weight rows ``ids`` (int64), dequantized (the embedding)."""
        if len(self.parts) != 1:
            raise ValueError("rows(): an embedding table is a single quantized tensor")
        fmt, packed, n = self.parts[0]
        return ops.quant_dequantize_rows(packed, fmt, n, ids)
