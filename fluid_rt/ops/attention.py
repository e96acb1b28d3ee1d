"""DEV-ONLY plain-torch stand-in for the attention family (the lead drops this at merge).

Implements exactly the ``causal_attention`` contract of DEVELOPERS.md so the model can be developed
and tested before the real kernel lands. Static shapes: it scores every cache slot and masks.
"""

from __future__ import annotations

import torch

__all__ = ["causal_attention"]


def causal_attention(q, k_cache, v_cache, cache_seqlens, k=None, v=None, cache_batch_idx=None,
                     softmax_scale=None):
    """q [B, T, Hq, D]; k_cache, v_cache [Bc, S, Hkv, D]; cache_seqlens [B] int32;
    k, v [B, T, Hkv, D] (written at cache_seqlens[b] + t first); cache_batch_idx [B] int32.
    Returns out [B, T, Hq, D] (q dtype), lse [B, T, Hq] float32."""
    B, T, Hq, D = q.shape
    S, Hkv = k_cache.shape[1], k_cache.shape[2]
    rows = (torch.arange(B, device=q.device) if cache_batch_idx is None
            else cache_batch_idx.long())
    t = torch.arange(T, device=q.device)
    pos = cache_seqlens.long()[:, None] + t[None, :]  # [B, T]
    if k is not None:
        k_cache[rows[:, None], pos] = k.to(k_cache.dtype)
        v_cache[rows[:, None], pos] = v.to(v_cache.dtype)
    # Slots past a row's last position are never read (they may hold NaN from a poisoned cache).
    readable = torch.arange(S, device=q.device)[None, :] <= pos[:, -1:]  # [B, S]
    kc = k_cache.index_select(0, rows).float().masked_fill(~readable[:, :, None, None], 0)
    vc = v_cache.index_select(0, rows).float().masked_fill(~readable[:, :, None, None], 0)
    g = Hq // Hkv
    kc = kc[:, :, :, None].expand(B, S, Hkv, g, D).reshape(B, S, Hq, D)
    vc = vc[:, :, :, None].expand(B, S, Hkv, g, D).reshape(B, S, Hq, D)
    scale = D ** -0.5 if softmax_scale is None else softmax_scale
    s = torch.einsum("bthd,bshd->bhts", q.float(), kc) * scale  # [B, Hq, T, S]
    allowed = torch.arange(S, device=q.device)[None, None, :] <= pos[:, :, None]  # [B, T, S]
    s = s.masked_fill(~allowed[:, None], float("-inf"))
    lse = torch.logsumexp(s, dim=-1)  # [B, Hq, T]
    p = torch.exp(s - lse[..., None])
    out = torch.einsum("bhts,bshd->bthd", p, vc).to(q.dtype)
    return out, lse.transpose(1, 2).contiguous()
