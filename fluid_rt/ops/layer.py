"""One decoder layer of the CPU forward on quantized weights as one op call
(``torch.ops.fluid_rt.decoder_layer_``).

The model's layer is eight op calls (two norms, four quantized projections, RoPE, attention); on
the CPU each costs a few microseconds of Python and dispatcher work around kernels of a few
microseconds, which for SmolLM2's 30 layers is a large part of a decode step. The op runs the same
impls in the same order, so its results are bitwise those of the eight calls
(``fluid_rt.model.Transformer`` uses it where it applies, ``tests/test_layer_op.py`` compares).
"""

from __future__ import annotations

import torch

__all__ = ["decoder_layer_"]


@torch.library.register_fake("fluid_rt::decoder_layer_")
def _decoder_layer_fake(
    x, delta, ln_in, ln_post, eps, weights, formats, out_features, biases, cos, sin, k_cache, v_cache,
    cache_seqlens, cache_batch_idx, heads_q, heads_kv, lora_rows, lora_a_t, lora_b,
):  # fmt: skip
    return torch.empty_like(x)  # (the op requires down's out_features = x's hidden size)


def decoder_layer_(
    x: torch.Tensor,
    delta: torch.Tensor | None,
    ln_in: torch.Tensor,
    ln_post: torch.Tensor,
    eps: float,
    projections: tuple,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    cache_batch_idx: torch.Tensor | None,
    heads_q: int,
    heads_kv: int,
    lora: tuple | None = None,
) -> torch.Tensor:
    """One pre-norm decoder layer (SwiGLU MLP, grouped-query attention over a KV cache).

    Args:
        x: ``[B, T, H]`` float32/bfloat16 CPU, contiguous: the residual stream, updated in place
            (``delta`` added, then the attention output).
        delta: ``[B, T, H]`` or None: the previous layer's output, added into x first.
        ln_in, ln_post: ``[H]`` RMSNorm weights (x's dtype) before attention and before the MLP.
        eps: RMSNorm epsilon.
        projections: ``(weights, formats, out_features, biases)``, four each, for qkv (q, k, v
            stacked), o, gate_up (gate, up stacked) and down: ``ops.quant_pack`` weights, their
            format numbers and output sizes, and biases (``[out]`` in x's dtype, or None).
        cos, sin: ``[B, T, head_dim]`` RoPE tables at the tokens' positions (``ops.rope_``).
        k_cache, v_cache, cache_seqlens, cache_batch_idx: as ``ops.causal_attention``, which writes
            the tokens' K/V at each row's length.
        heads_q, heads_kv: query and K/V heads (head_dim = qkv's out size / (heads_q + 2 heads_kv)).
        lora: optional ``(rows, a_t, b_t)``: the gated adapter's delta at ``rows`` (int64 ``[n]``
            indices into the ``B * T`` rows; empty: none), ``a_t``/``b_t`` four factors each as
            ``ops.gated_lora_`` takes them, split by the projections' parts.

    Returns:
        ``[B, T, H]``: the layer's output (the down projection), for the next layer's ``delta``.
        On an argument error nothing is written.
    """
    weights, formats, out_features, biases = projections
    rows, a_t, b_t = lora if lora is not None else (None, [], [])
    return torch.ops.fluid_rt.decoder_layer_(
        x,
        delta,
        ln_in,
        ln_post,
        float(eps),
        weights,
        formats,
        out_features,
        biases,
        cos,
        sin,
        k_cache,
        v_cache,
        cache_seqlens,
        cache_batch_idx,
        int(heads_q),
        int(heads_kv),
        rows,
        a_t,
        b_t,
    )
