"""Causal attention of new queries over a KV cache (``torch.ops.fluid_rt.causal_attention``)."""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch

from fluid_rt.ops._backend import op_library

__all__ = ["causal_attention", "SUPPORTED_HEAD_DIMS"]

# Head dims the kernels are instantiated for (csrc/attention/params.h).
SUPPORTED_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)


@torch.library.register_fake("fluid_rt::causal_attention")
def _causal_attention_fake(q, k_cache, v_cache, cache_seqlens, k=None, v=None, cache_batch_idx=None,
                           softmax_scale=None):
    # Shapes only; the binding holds the full argument check (it runs on real tensors).
    if not isinstance(q, torch.Tensor) or q.dim() != 4:
        raise ValueError(f"q: expected a 4-D tensor, got {getattr(q, 'shape', q)}")
    if q.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"q: expected float32, bfloat16 or float16, got {q.dtype}")
    B, T, Hq, D = q.shape
    out = q.new_empty((B, T, Hq, D))
    lse = q.new_empty((B, T, Hq), dtype=torch.float32)
    return out, lse


def causal_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    cache_seqlens: torch.Tensor,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    *,
    cache_batch_idx: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    return_lse: bool = False,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Attention of T new queries per row over a KV cache, bottom-right aligned causal.

    Args:
        q: ``[B, T, Hq, D]`` float32/bfloat16/float16, last dim contiguous (other strides free,
            e.g. a slice of a fused qkv projection). ``D`` in {16, 32, 64, 80, 96, 128, 256}.
        k_cache, v_cache: ``[Bc, S_max, Hkv, D]``, contiguous, q's dtype; ``Hq % Hkv == 0`` (GQA).
            Written in place when ``k``/``v`` are given.
        cache_seqlens: ``[B]`` int32, tokens already in the cache of query row b. Never modified.
        k, v: optional ``[B, T, Hkv, D]`` (q's dtype, last dim contiguous): the new tokens' keys and
            values, written to cache slots ``cache_seqlens[b] .. cache_seqlens[b] + T - 1`` before
            attending. Give both or neither.
        cache_batch_idx: optional ``[B]`` int32, query row b uses cache row ``cache_batch_idx[b]``
            (identity when absent, then ``Bc >= B``).
        softmax_scale: scale of the scores, default ``D ** -0.5``.
        return_lse: also return the log-sum-exp.

    Query t of row b attends cache keys ``0 .. cache_seqlens[b] + t``; requires
    ``cache_seqlens[b] + T <= S_max``. On the CPU violations raise ValueError; on CUDA (no host sync)
    such rows get NaN in ``out`` and ``lse`` and their cache is left untouched.

    Returns:
        ``out [B, T, Hq, D]`` in q's dtype, and with ``return_lse`` also ``lse [B, T, Hq]`` float32
        (natural log of the softmax denominator of the scaled scores).
    """
    out, lse = op_library().causal_attention(
        q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale
    )
    return (out, lse) if return_lse else out
