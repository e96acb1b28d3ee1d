"""The phases between two elastic forwards, in order, as device ops on a ``Batch`` (no host sync, so
a CUDA graph captures a whole step):

1. ``verify``: rows that were verifying commit ``block[:f] + [pred_f]`` (or the whole block). The
   accepted prefix's K/V is already exact, so there is no recommit forward: after a mismatch the
   corrected token is the next forward's pending token.
2. ``start_blocks``: rows that start a block pick K (``policies.HorizonPolicy``) from the hidden
   state at their pending slot: slot 0 after a mismatch or after prefill, slot K when the whole
   block was accepted (its trailing MASKs *are* the next block's first draft pass).
3. ``draft``: one ``draft_commit`` update for every drafting row. Its predictions at block
   positions 0..step saw only final tokens, so they are the verify's (causality): kept in
   ``final_pred``.
4. ``settle_early``: a row commits at once, skipping its verify forward, when a filled block's
   mismatch is already shown, or when what it would commit already ends the decode (reaches the
   budget or an EOS).
5. ``next_input``: the next forward's ``[pending, block, MASK]``.

The forward's outputs start at input slot ``b.start`` of each row (0 unless an eager step trimmed
the prefix whose K/V the previous forward already computed).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fluid_rt import ops
from fluid_rt.decode.batch import Batch


@dataclass
class Outputs:
    """One forward's outputs: ``pred``/``score``/``entropy`` ``[rows, width]``, ``hidden``
    ``[rows, width, H]``; output j of row b is input slot ``start[b] + j``."""

    pred: torch.Tensor
    score: torch.Tensor
    entropy: torch.Tensor
    hidden: torch.Tensor
    start: torch.Tensor

    def at(self, values: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``values [rows, width]`` at input ``slots [rows, n]``. A slot outside the forward is
        clamped: its value is never read."""
        index = (slots - self.start[:, None]).clamp_(0, values.shape[1] - 1)
        return values.gather(1, index)


def read_outputs(b: Batch, logits: torch.Tensor, hidden: torch.Tensor) -> Outputs:
    stats = ops.token_entropy(logits)
    torch.sum(stats.logsumexp, dim=1, out=b.lse_sum)
    return Outputs(stats.argmax, b.commit_policy.score(stats), stats.entropy, hidden, b.start)


def _commit(b: Batch, pred: torch.Tensor, rows: torch.Tensor) -> None:
    """``verify_commit`` of ``rows`` (cleared) against ``pred [rows, bs]``."""
    ops.verify_commit(
        b.block,
        pred,
        b.horizon,
        rows,
        b.eos,
        b.remask,
        b.out,
        b.out_len,
        b.budget,
        b.done,
        b.pending,
        b.seqlens,
        b.committed,
        b.mismatch,
    )


def verify(b: Batch, out: Outputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 1. Returns the rows whose verify accepted the whole block and those it rejected
    (both still running). Predictions of positions before ``start`` come from ``final_pred``."""
    was_verifying = b.verifying.clone()  # verify_commit clears the flags it acts on
    here = out.at(out.pred, b.position.expand(b.rows, -1))
    _commit(b, torch.where(b.position < b.start[:, None], b.final_pred, here), b.verifying)
    b.trace.record(0, was_verifying, b.horizon, b.passes, b.committed, b.mismatch)
    live = ~b.done
    accepted = was_verifying & (b.mismatch < 0) & live
    rejected = was_verifying & (b.mismatch >= 0) & live
    return accepted, rejected


def start_blocks(b: Batch, out: Outputs, accepted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Phase 2. Returns the rows that start a block and the input slot of each one's pending
    token (where its block position 0 is predicted)."""
    new = (b.restart | accepted) & ~b.done
    slot = torch.where(accepted, b.horizon, 0).long()
    # On the CPU a tensor read costs nothing: skip the K-head in the many steps that start no
    # block. Elsewhere the step must not read the device.
    if new.device.type != "cpu" or bool(new.any()):
        at = torch.arange(b.rows, device=new.device)
        col = (slot - out.start).clamp_(min=0)
        k = b.horizon_policy.choose(
            out.hidden[at, col], out.entropy[at, col], b.min_block, b.block_size, b.khead
        )
        b.horizon.copy_(torch.where(new, k, b.horizon))
    b.block.masked_fill_(new[:, None], b.mask_id)
    b.step.masked_fill_(new, 0)
    b.passes.masked_fill_(new, 0)
    b.drafting |= new
    return new, slot


@dataclass
class DraftPass:
    """What ``draft`` leaves for the later phases: the rows that drafted, their step before the
    pass, which block positions they saw with final inputs (``known``), and the rows whose block
    the pass filled."""

    drafting: torch.Tensor
    step_before: torch.Tensor
    known: torch.Tensor
    filled: torch.Tensor


def draft(b: Batch, out: Outputs, new: torch.Tensor, slot: torch.Tensor) -> DraftPass:
    """Phase 3: one draft pass for every drafting row; a row whose block filled up verifies next
    (unless ``settle_early`` commits it)."""
    slots = torch.where(new, slot, 0)[:, None] + b.position  # block position j -> input slot
    drafting, step_before = b.drafting.clone(), b.step.clone()  # draft_commit updates both
    pred = out.at(out.pred, slots)
    known = b.position <= step_before[:, None]
    final = drafting[:, None] & known & (slots >= b.start[:, None])
    b.final_pred.copy_(torch.where(final, pred, b.final_pred))
    b.passes += drafting.to(torch.int32)
    ops.draft_commit(
        b.block,
        b.step,
        b.drafting,
        pred,
        out.at(out.score, slots),
        b.horizon,
        b.threshold,
        b.mask_id,
        b.commit_policy.score_is_entropy,
    )
    return DraftPass(drafting, step_before, known, drafting & ~b.drafting)


def settle_early(b: Batch, d: DraftPass) -> torch.Tensor:
    """Phase 4. Commit now, without a verify forward, where the passes already settled the
    outcome:

    * a filled block whose first mismatch they showed (a confident draft that a later pass's
      final prediction contradicts): the verify would only repeat it;
    * the last block: what a commit now would take (the agreeing known prefix, or up to the known
      mismatch and its correction) already reaches the budget or an EOS. The reference drafts on
      (so its trace of that block shows more passes), to the same tokens.

    Returns the rows that committed with a mismatch and still run (their block restarts)."""
    wrong = b.remask[:, None] & d.known & (b.block != b.final_pred)
    any_wrong = wrong.any(1)
    take = torch.where(any_wrong, wrong.int().argmax(1) + 1, d.step_before + 1)
    taken = b.position < take[:, None]
    tokens = torch.where(b.remask[:, None], b.final_pred, b.block)
    eos = (tokens[:, :, None] == b.eos[:, None, :]).any(2) & (tokens >= 0)
    last = d.drafting & ((take >= b.budget - b.out_len) | (eos & taken).any(1))
    early = (d.filled & any_wrong) | last
    b.drafting &= ~early
    _commit(b, torch.where(d.known, b.final_pred, b.block), early.clone())
    b.trace.record(1, early, b.horizon, b.passes, b.committed, b.mismatch)
    b.verifying |= d.filled & ~early
    return early & ~b.done


def next_input(b: Batch, rejected: torch.Tensor, d: DraftPass, reuse_prefix: bool) -> None:
    """Phase 5. After a mismatch the corrected token is pending and the block restarts. With
    ``reuse_prefix`` (eager steps) the next forward starts after the last pass's step: a draft
    pass wrote positions >= its step only, so the K/V of slots 0..step (pending + block[:step])
    this forward computed stay exact for the next draft pass or verify."""
    if reuse_prefix:
        b.start.copy_(torch.where(b.drafting | b.verifying, d.step_before + 1, 0))
    b.restart.copy_(rejected)
    b.block.masked_fill_(rejected[:, None], b.mask_id)
    bs = b.block.shape[1]
    in_block = b.position < b.horizon[:, None]
    b.tokens[:, 0] = b.pending
    b.tokens[:, 1 : 1 + bs] = torch.where(in_block, b.block, b.mask_id)
    b.tokens[:, 1 + bs :] = b.mask_id


def advance(
    b: Batch, logits: torch.Tensor, hidden: torch.Tensor, reuse_prefix: bool, fused: bool = False
) -> None:
    """Everything between two elastic forwards (phases 1-5). ``b.restart`` marks rows whose new
    block begins at output slot 0 of this forward (after prefill or a mismatch). ``fused``: the
    same in one op call (``ops.elastic_step``, CPU only; see ``can_fuse``)."""
    if fused:
        return _advance_fused(b, logits, hidden, reuse_prefix)
    out = read_outputs(b, logits, hidden)
    accepted, rejected = verify(b, out)
    new, slot = start_blocks(b, out, accepted)
    d = draft(b, out, new, slot)
    rejected |= settle_early(b, d)
    next_input(b, rejected, d, reuse_prefix)


def can_fuse(b: Batch, device: torch.device) -> bool:
    """Whether ``advance`` / ``commit_ar`` may run as ``ops.elastic_step`` / ``ops.ar_step``: on the
    CPU, within the op's block bound, with a float32 CPU K-head (``KHead.op_weights``) where the
    horizon policy reads one."""
    if device.type != "cpu":
        return False
    if b.mode == "ar":
        return True
    if b.block.shape[1] > ops.STEP_MAX_BLOCK:
        return False
    return b.horizon_policy.kind != "khead" or getattr(b.khead, "op_weights", None) is not None


def _advance_fused(b: Batch, logits: torch.Tensor, hidden: torch.Tensor, reuse_prefix: bool) -> None:
    stats = ops.token_entropy(logits)
    score = b.commit_policy.score(stats)
    policy = b.horizon_policy
    ops.elastic_step(
        (stats.argmax, score, stats.entropy, stats.logsumexp),
        hidden.contiguous(),
        b.khead.op_weights if policy.kind == "khead" else None,
        policy.kind,
        (policy.entropy_low, policy.entropy_high),
        b.commit_policy.score_is_entropy,
        reuse_prefix,
        b.mask_id,
        b.step_state(),
    )


def commit_ar(b: Batch, logits: torch.Tensor, fused: bool = False) -> None:
    """Greedy AR's step: commit the argmax after the last slot through the same commit kernel
    (a one-token block, accepted as it is). ``fused``: in one op call (``ops.ar_step``, CPU)."""
    stats = ops.token_entropy(logits[:, -1:])
    if fused:
        return ops.ar_step(stats.argmax.view(-1), stats.logsumexp.view(-1), b.step_state())
    torch.sum(stats.logsumexp, dim=1, out=b.lse_sum)
    pred = stats.argmax.contiguous()
    b.verifying.copy_(~b.done)
    ops.verify_commit(
        pred,
        pred,
        torch.ones_like(b.horizon),
        b.verifying,
        b.eos,
        b.remask,
        b.out,
        b.out_len,
        b.budget,
        b.done,
        b.pending,
        b.seqlens,
        b.committed,
        b.mismatch,
    )
