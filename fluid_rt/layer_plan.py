"""Which decoder layers of a ``Transformer`` run as one op call (``ops.decoder_layer_``), and the
arguments that do not change between forwards.

A layer fits when it is on the CPU, in float32 or bfloat16, and its four projections are quantized
with one block type each (``QuantLinear`` with one part: a K-quant file's q/k/v of mixed types run
as several calls), either plain or all four wrapped by the gated adapter (sharing one set of mask
rows). Everything else (float weights, CUDA, mixed types) keeps the model's op-by-op layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluid_rt.qlinear import QuantLinear

SLOTS = ("qkv", "o", "gate_up", "down")


@dataclass(frozen=True)
class LayerPlan:
    """One layer's ``ops.decoder_layer_`` arguments: the norms, the projections
    ``(weights, formats, out_features, biases)``, and with an adapter its factors ``(a_t, b_t)``
    per projection and the mask rows its wrappers share (``adapter.MaskRows``: the forward's mask
    rows, read at each forward, as the wrappers do)."""

    ln_in: torch.Tensor
    ln_post: torch.Tensor
    projections: tuple
    lora_factors: tuple | None
    lora_rows: object | None


def _plan(layer) -> LayerPlan | None:
    parts, factors, rows = [], [], []
    for slot in SLOTS:
        linear = getattr(layer, slot)
        inner = getattr(linear, "inner", linear)  # adapter.GatedLoRALinear wraps the projection
        if not isinstance(inner, QuantLinear) or len(inner.parts) != 1:
            return None
        if inner is not linear:
            if linear.op_factors is None:
                return None
            factors.append(linear.op_factors)
            rows.append(linear.rows)
        fmt, packed, n = inner.parts[0]
        parts.append((packed, fmt, n, inner.bias))
    if factors and (len(factors) != len(SLOTS) or any(r is not rows[0] for r in rows)):
        return None
    weights, formats, outs, biases = (list(t) for t in zip(*parts))
    lora = (tuple(a for a, _ in factors), tuple(b for _, b in factors)) if factors else None
    return LayerPlan(
        layer.ln_in, layer.ln_post, (weights, formats, outs, biases), lora, rows[0] if rows else None
    )


def layer_plans(model) -> list | None:
    """Every layer's plan, or None when some layer (or the model) does not fit."""
    if model.device.type != "cpu" or model.dtype not in (torch.float32, torch.bfloat16):
        return None
    plans = [_plan(layer) for layer in model.layers]
    return None if any(p is None for p in plans) else plans
