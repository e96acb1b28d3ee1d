"""Causal attention of new queries over a KV cache (``torch.ops.fluid_rt.causal_attention``)."""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from fluid_rt import _C
from fluid_rt.ops import _backend
from fluid_rt.ops._backend import op_library

__all__ = ["causal_attention", "SUPPORTED_HEAD_DIMS", "uses_torch_fallback"]

# Head dims the kernels are instantiated for (csrc/attention/params.h).
SUPPORTED_HEAD_DIMS = (16, 32, 64, 80, 96, 128, 256)

# "Never slower than torch" (benchmarks/bench_isa.py measures it per CPU path): the avx2 and avx512
# kernels beat torch's SDPA at the benchmark's decode and prefill shapes; the portable kernel (4-lane
# vectors, and no FMA on x86-64's baseline) measured 0.6-0.75x SDPA there, so on that path the
# wrapper runs torch's SDPA for calls of at least _FALLBACK_MIN_WORK multiply-adds per row (queries
# x keys x query heads x head dim). Below that the fallback's fixed cost (an argument check, the
# cache writes, a mask and an SDPA call per row: ~0.4 ms) outweighs what SDPA saves: bench_isa's
# "small" case (9 queries, 265 keys, 9 heads of 64: 1.4M) measured our kernel 3x faster than it.
# That SDPA was torch's AVX-512 one. An x86 torch held to its baseline code (ATen's DEFAULT
# capability: a CPU without AVX2, or bench_isa's restricted torch) measured 1.3-1.8x slower than the
# portable kernel at those shapes, so there the kernel stays (_torch_outpaces_portable).
_FALLBACK_PATHS = ("portable",)
_FALLBACK_MIN_WORK = 1 << 24
_force_kernel = False


@functools.cache
def _torch_outpaces_portable() -> bool:
    """Whether torch's CPU code has wider vectors than the portable kernel: an x86 torch running
    AVX2 or AVX-512 code, or any other architecture (aarch64's NEON torch, not measured here)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    return torch.backends.cpu.get_cpu_capability() != "DEFAULT"


def _on_fallback_path() -> bool:
    return not _force_kernel and _C.cpu_isa() in _FALLBACK_PATHS and _torch_outpaces_portable()


def uses_torch_fallback(seqlen_q: int, keys: int, heads_q: int, head_dim: int) -> bool:
    """Whether ``causal_attention`` on CPU tensors runs torch's SDPA (see _FALLBACK_PATHS) rather than
    our kernel on the CPU path in use, for rows of ``seqlen_q`` queries over up to ``keys`` keys."""
    return _on_fallback_path() and seqlen_q * keys * heads_q * head_dim >= _FALLBACK_MIN_WORK


@contextlib.contextmanager
def force_kernel() -> Iterator[None]:
    """Always run our kernel inside the block (tests and benchmarks of the kernel itself)."""
    global _force_kernel
    previous, _force_kernel = _force_kernel, True
    try:
        yield
    finally:
        _force_kernel = previous


def call_uses_torch_fallback(seqlen_q: int, cache_seqlens, heads_q: int, head_dim: int) -> bool:
    """``uses_torch_fallback`` for a call with these ``cache_seqlens`` (read on the host only on a
    fallback path); False for calls the op rejects or that have nothing to do."""
    if not _on_fallback_path():
        return False
    if (
        not isinstance(cache_seqlens, torch.Tensor)
        or cache_seqlens.device.type != "cpu"
        or cache_seqlens.numel() == 0
    ):
        return False  # (the op raises, or has nothing to do)
    return uses_torch_fallback(seqlen_q, int(cache_seqlens.max()) + seqlen_q, heads_q, head_dim)


def _fallback_for(q, cache_seqlens) -> bool:
    B, T, Hq, D = q.shape
    return B > 0 and call_uses_torch_fallback(T, cache_seqlens, Hq, D)


def _check_fallback_args(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale):
    """The op's argument checks for ``_torch_attention`` (the same errors as the kernel's):
    returns each row's cache length and its cache row, as host lists."""
    B, T = q.shape[:2]
    torch.ops.fluid_rt.causal_attention(
        q[:, :0],
        k_cache,
        v_cache,
        cache_seqlens,
        None if k is None else k[:, :0],
        None if v is None else v[:, :0],
        cache_batch_idx,
        softmax_scale,
    )
    # What an empty call cannot see: the new k/v's own T, and memory shared with the caches.
    for name, t in (("k", k), ("v", v)):
        if t is not None and t.shape[:2] != q.shape[:2]:
            raise ValueError(
                f"{name}: expected [B, T] = {list(q.shape[:2])} leading dims, got {list(t.shape)}"
            )
    caches = {k_cache.untyped_storage().data_ptr(), v_cache.untyped_storage().data_ptr()}
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t is not None and t.untyped_storage().data_ptr() in caches:
            raise ValueError(f"{name}: must not share memory with k_cache or v_cache")
    seqlens = cache_seqlens.tolist()
    rows = cache_batch_idx.tolist() if cache_batch_idx is not None else list(range(B))
    if k is not None and T > 0 and len(set(rows)) < len(rows):
        raise ValueError(
            f"cache_batch_idx: two query rows name the same cache row, both would write it: {rows}"
        )
    S_max = k_cache.shape[1]
    if S_max < T:  # (the binding's checks, for the T of this call)
        raise ValueError(f"q: {T} query tokens cannot fit a cache of length {S_max} (k_cache dim 1)")
    for b in range(B):
        if seqlens[b] + T > S_max:
            raise ValueError(
                f"cache_seqlens: row {b} has {seqlens[b]} tokens, + {T} new ones exceed the "
                f"cache's {S_max} slots (k_cache dim 1)"
            )
    return seqlens, rows


def _torch_attention(q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale, want_lse):
    """The op's contract by torch ops, CPU: the binding checks the arguments (a call with no
    queries), the new k/v go into the caches, then SDPA per row over its keys (bottom-right aligned
    causal mask) and, when asked for, lse as a logsumexp of the scaled scores (else None). Not
    bitwise independent of the call's width (torch promises no such thing): the portable path gives
    up that property of our kernel."""
    B, T, Hq, D = q.shape
    seqlens, rows = _check_fallback_args(
        q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale
    )
    if k is not None:
        for b, r in enumerate(rows):
            k_cache[r, seqlens[b] : seqlens[b] + T].copy_(k[b])
            v_cache[r, seqlens[b] : seqlens[b] + T].copy_(v[b])
    scale = D**-0.5 if softmax_scale is None else softmax_scale
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    lse = torch.empty(B, T, Hq, dtype=torch.float32) if want_lse else None
    group = Hq // k_cache.shape[2]
    for b, r in enumerate(rows):
        L = seqlens[b] + T
        qb, kb, vb = q[b].transpose(0, 1), k_cache[r, :L].transpose(0, 1), v_cache[r, :L].transpose(0, 1)
        # An empty cache (prefill): is_causal is the same mask, and SDPA skips the masked blocks.
        # Otherwise an additive mask, -inf above the diagonal of the last T keys (a bool mask would be
        # converted to this inside SDPA: one tensor op more per call).
        if L == T:
            causal = dict(is_causal=True)
        else:
            mask = torch.zeros(T, L, dtype=q.dtype)
            mask[:, L - T :] = torch.full((T, T), float("-inf"), dtype=q.dtype).triu_(1)
            causal = dict(attn_mask=mask)
        out[b] = F.scaled_dot_product_attention(
            qb[None], kb[None], vb[None], scale=scale, enable_gqa=True, **causal
        )[0].transpose(0, 1)
        if want_lse:
            scores = torch.matmul(qb.float(), kb.float().repeat_interleave(group, 0).transpose(1, 2)) * scale
            scores.masked_fill_(torch.ones(T, L, dtype=torch.bool).triu_(L - T + 1), float("-inf"))
            lse[b] = torch.logsumexp(scores, -1).transpose(0, 1)
    return out, lse


@torch.library.register_fake("fluid_rt::causal_attention")
def _causal_attention_fake(
    q, k_cache, v_cache, cache_seqlens, k=None, v=None, cache_batch_idx=None, softmax_scale=None
):
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
    k: torch.Tensor | None = None,
    v: torch.Tensor | None = None,
    *,
    cache_batch_idx: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
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

    On the CPU's portable path (``fluid_rt.cpu_isa()``) large calls run torch's SDPA instead of our
    kernel, which is slower there (``uses_torch_fallback``); their rows are then not bitwise
    independent of the call's width.

    Returns:
        ``out [B, T, Hq, D]`` in q's dtype, and with ``return_lse`` also ``lse [B, T, Hq]`` float32
        (natural log of the softmax denominator of the scaled scores).
    """
    # (Compiled graphs keep the op: the choice reads host values.)
    if (
        isinstance(q, torch.Tensor)
        and q.device.type == "cpu"
        and q.dim() == 4
        and not _backend._emulate
        and not torch.compiler.is_compiling()
        and _fallback_for(q, cache_seqlens)
    ):
        out, lse = _torch_attention(
            q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale, return_lse
        )
        return (out, lse) if return_lse else out
    out, lse = op_library().causal_attention(
        q, k_cache, v_cache, cache_seqlens, k, v, cache_batch_idx, softmax_scale
    )
    return (out, lse) if return_lse else out
