"""The commit family: FLUID draft/verify bookkeeping, per sequence, in place on the device.

Both ops mutate their state tensors in place and return nothing, so the decode loop
(``fluid_rt.decode``) never waits for the host between forwards, and a step can be captured in a
CUDA graph. Exact semantics: DEVELOPERS.md ("draft_commit", "verify_commit") and
docs/spec/decoding.md, steps 2-4.

Argument checks (shapes, dtypes, devices, contiguity, memory overlap) raise ``ValueError`` /
``RuntimeError`` naming the argument. Values only the device knows (horizon, step, out_len,
budget) are checked on the CPU (``ValueError``); on CUDA they are never read by the host, and the
kernel guards the rows instead (see each op).

verify_commit, for a selected row (``verifying[b] and not done[b]``): ``f`` = first ``j < K`` with
``block[b, j] != pred[b, j]`` (none when ``remask`` is false); the committed tokens are
``block[b, :f] + [pred[b, f]]`` or ``block[b, :K]``. They are appended to
``out_tokens[b, out_len[b]:]`` while ``out_len[b] < budget[b]``, stopping right after the first
token in ``eos_ids[b]`` (kept); either stop sets ``done[b]``. ``verifying[b]`` is cleared.
Rows not selected (``verifying[b]`` false, or ``done[b]`` already set) are left entirely
untouched, including their ``committed``, ``mismatch`` and ``verifying`` entries.
Bad values in a selected row (``K`` outside ``[1, Kmax]``, ``out_len < 0``, ``budget < out_len``,
``budget > N``): the CPU raises ``ValueError``; the CUDA kernel finishes the row without writing
tokens (``done = True``, ``verifying = False``, ``committed = 0``, ``mismatch = -1``;
``out_tokens``, ``out_len``, ``pending``, ``cache_seqlens`` untouched).
"""

from __future__ import annotations

import torch

from fluid_rt.ops._backend import op_library

__all__ = ["draft_commit", "verify_commit"]


def _per_row(value, like: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """A per-row parameter as a ``[B]`` tensor: a tensor is passed through (the op checks it), a
    Python scalar is broadcast (one small allocation; decode loops pass tensors)."""
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, (bool, int, float)):
        raise TypeError(f"{name}: expected a number or a [B] tensor, got {type(value).__name__}")
    return torch.full((like.shape[0] if like.dim() else 0,), value, dtype=dtype, device=like.device)


def draft_commit(
    block: torch.Tensor,
    step: torch.Tensor,
    drafting: torch.Tensor,
    pred: torch.Tensor,
    score: torch.Tensor,
    horizon: torch.Tensor,
    threshold: float | torch.Tensor,
    mask_token_id: int,
    score_is_entropy: bool = False,
) -> None:
    """One draft pass's commit (spec step 2) for every row with ``drafting[b]``, in place.

    Args:
        block: ``[B, Kmax]`` int64, the draft blocks (``mask_token_id`` where still open). Updated.
        step: ``[B]`` int32, the left-most open position ``s`` of each row. Updated.
        drafting: ``[B]`` bool, the rows to update. Updated (cleared when a row's draft is done).
        pred: ``[B, Kmax]`` int64, the argmax predicting block position ``j``.
        score: ``[B, Kmax]`` float32, the max softmax probability of position ``j`` (or its
            entropy when ``score_is_entropy``).
        horizon: ``[B]`` int32, the row's block length ``K``, ``1 <= K <= Kmax``.
        threshold: ``[B]`` float32, the commit threshold of each row (a Python float is
            broadcast); compared in float32, as ``score > threshold`` on a float32 tensor in torch.
        mask_token_id: the MASK id.
        score_is_entropy: confident means ``score < threshold`` instead of ``score > threshold``.

    For a drafting row with ``K = horizon[b]`` and ``s = step[b]``::

        block[b, s] = pred[b, s]                 # always
        for j in s+1 .. K-1: if confident(score[b, j]): block[b, j] = pred[b, j]
        step[b] = s + 1 + jump                   # jump = confident run starting at s+1
        drafting[b] = any(block[b, :K] == mask_token_id) and step[b] < K

    The ``step[b] < K`` term only matters when the model predicted the MASK id itself: the spec's
    draft loop ends at ``s >= K`` too. Positions ``>= K`` and rows not drafting are never touched.
    NaN scores are never confident.

    Requires ``0 <= step[b] < K`` and ``1 <= K <= Kmax`` for drafting rows: the CPU raises
    ``ValueError``; the CUDA kernel, which cannot raise, clears ``drafting[b]`` of such a row and
    writes nothing else.
    """
    op_library().draft_commit(
        block,
        step,
        drafting,
        pred,
        score,
        horizon,
        _per_row(threshold, block, torch.float32, "threshold"),
        int(mask_token_id),
        bool(score_is_entropy),
    )


def verify_commit(
    block: torch.Tensor,
    pred: torch.Tensor,
    horizon: torch.Tensor,
    verifying: torch.Tensor,
    eos_ids: torch.Tensor,
    remask: bool | torch.Tensor,
    out_tokens: torch.Tensor,
    out_len: torch.Tensor,
    budget: torch.Tensor,
    done: torch.Tensor,
    pending: torch.Tensor,
    cache_seqlens: torch.Tensor,
    committed: torch.Tensor,
    mismatch: torch.Tensor,
) -> None:
    """One verify pass's commit (spec steps 3-4) for every row with ``verifying[b] and not done[b]``.

    Args:
        block: ``[B, Kmax]`` int64, the drafted blocks.
        pred: ``[B, Kmax]`` int64, the verify argmax predicting block position ``j``.
        horizon: ``[B]`` int32, ``K`` of each row (``1 <= K <= Kmax``).
        verifying: ``[B]`` bool, rows to commit. Cleared for every committed row.
        eos_ids: ``[B, E]`` int64, each row's EOS ids, -1 for unused slots (``E`` may be 0); a
            ``[E]`` tensor is shared by all rows.
        remask: ``[B]`` bool (or one bool for all rows): look for the first mismatch; when false
            the row's block is accepted as drafted.
        out_tokens: ``[B, N]`` int64, the generated tokens. Appended to.
        out_len: ``[B]`` int32, tokens in ``out_tokens``. Updated.
        budget: ``[B]`` int32, the most tokens ``out_tokens[b]`` may hold in all
            (``out_len <= budget <= N``).
        done: ``[B]`` bool. Set on EOS or when the budget is reached.
        pending: ``[B]`` int64. Set to the last committed token (of the uncut list).
        cache_seqlens: ``[B]`` int32. ``+= committed[b]`` for rows not done afterwards; rows that
            finish in this call keep their value.
        committed: ``[B]`` int32. Set to the count of committed tokens before EOS/budget cuts.
        mismatch: ``[B]`` int32. Set to the first mismatch ``f``, or -1.

    What a selected row commits, what happens to the others and to bad values: the module
    docstring ("verify_commit").
    """
    if isinstance(eos_ids, torch.Tensor) and eos_ids.dim() == 1 and block.dim() == 2:
        eos_ids = eos_ids.expand(block.shape[0], -1).contiguous()
    op_library().verify_commit(
        block,
        pred,
        horizon,
        verifying,
        eos_ids,
        _per_row(remask, block, torch.bool, "remask"),
        out_tokens,
        out_len,
        budget,
        done,
        pending,
        cache_seqlens,
        committed,
        mismatch,
    )


@torch.library.register_fake("fluid_rt::draft_commit")
def _draft_commit_fake(
    block, step, drafting, pred, score, horizon, threshold, mask_token_id, score_is_entropy
):
    return None


@torch.library.register_fake("fluid_rt::verify_commit")
def _verify_commit_fake(
    block,
    pred,
    horizon,
    verifying,
    eos_ids,
    remask,
    out_tokens,
    out_len,
    budget,
    done,
    pending,
    cache_seqlens,
    committed,
    mismatch,
):
    return None
