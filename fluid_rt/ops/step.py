"""The CPU decode step (``torch.ops.fluid_rt.elastic_step``) and the K-head it uses
(``torch.ops.fluid_rt.khead_logits``), CPU-only.

``elastic_step`` does for every row what ``fluid_rt.decode.phases.advance`` does with ~100 small
tensor ops, in one call: on the CPU those ops run right after a forward has streamed the model
through the caches, each kind of op starting cold, and cost ~1 ms a step. The phases remain the
definition (CUDA graphs capture them); the tests hold the two to the same state bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fluid_rt.ops._backend import op_library

__all__ = [
    "AR_STEP_STATE",
    "HORIZON_KINDS",
    "HOST_FIELDS",
    "KHEAD_MAX_INNER",
    "KHEAD_MAX_K",
    "STEP_MAX_BLOCK",
    "STEP_STATE",
    "ar_step",
    "elastic_step",
    "khead_logits",
]

HORIZON_KINDS = {"khead": 0, "entropy": 1, "fixed": 2}
KHEAD_MAX_INNER, KHEAD_MAX_K = 4096, 64  # khead_logits' bounds (csrc/step/khead.h)
STEP_MAX_BLOCK = 64  # elastic_step's block_size bound (csrc/step/params.h)

# What both steps leave for the host per row (``host [B, HOST_FIELDS]`` int32), so that the
# step's host read is one copy: the 10 trace ints (``StepTraces.data[b]`` flattened), out_len,
# done, the slots the next eager forward feeds (``Batch.slots_needed``), lse_sum's float32 bits.
HOST_FIELDS = 14

# The batch tensors the step reads and writes, in the op's order (``Batch`` attribute names;
# ``seqlens`` is the cache's per-row length, ``trace`` the ``StepTraces`` data).
STEP_STATE = (
    "tokens",
    "block",
    "step",
    "passes",
    "horizon",
    "final_pred",
    "drafting",
    "verifying",
    "restart",
    "done",
    "start",
    "pending",
    "out",
    "out_len",
    "budget",
    "seqlens",
    "committed",
    "mismatch",
    "eos",
    "remask",
    "threshold",
    "min_block",
    "block_size",
    "lse_sum",
    "trace",
    "host",
)

# The batch tensors ``ar_step`` reads and writes, in the op's order.
AR_STEP_STATE = (
    "out",
    "out_len",
    "budget",
    "done",
    "pending",
    "seqlens",
    "committed",
    "mismatch",
    "eos",
    "remask",
    "lse_sum",
    "host",
)


@torch.library.register_fake("fluid_rt::khead_logits")
def _khead_logits_fake(hidden, w1_t, b1, w2_t, b2):
    return hidden.new_empty((hidden.shape[0], w2_t.shape[1]))


@torch.library.register_fake("fluid_rt::elastic_step")
def _elastic_step_fake(*args):
    return None


@torch.library.register_fake("fluid_rt::ar_step")
def _ar_step_fake(*args):
    return None


def khead_logits(
    hidden: torch.Tensor, w1_t: torch.Tensor, b1: torch.Tensor, w2_t: torch.Tensor, b2: torch.Tensor
) -> torch.Tensor:
    """FLUID's K-head, ``Linear -> GELU (erf) -> Linear``, in float32 on the CPU.

    Args:
        hidden: ``[N, H]`` float32, contiguous.
        w1_t, b1: ``[H, H4]`` (the first Linear's weight, transposed) and ``[H4]``; ``H4 <= 4096``.
        w2_t, b2: ``[H4, max_k]`` and ``[max_k]``; ``max_k <= 64``. All float32, contiguous.

    Returns:
        ``[N, max_k]`` float32 logits. Each output sums its inputs in order (the decode step's
        K-head is this same code, so both pick the same K).
    """
    return op_library().khead_logits(hidden, w1_t, b1, w2_t, b2)


def elastic_step(
    stats,
    hidden: torch.Tensor,
    khead: tuple | None,
    horizon: str,
    entropy_bounds: tuple[float, float],
    score_is_entropy: bool,
    reuse_prefix: bool,
    mask_token_id: int,
    state: Mapping[str, torch.Tensor],
) -> None:
    """Everything between two elastic forwards, for every row, in place (the phases of
    ``fluid_rt.decode.phases``: verify, start blocks, draft, settle early, next input).

    Args:
        stats: ``(pred, score, entropy, lse)``, each ``[B, W]`` (int64, float32 x 3): the forward's
            ``token_entropy`` (``score``: the commit policy's, max prob or entropy).
        hidden: ``[B, W, H]`` float32/bfloat16/float16, the forward's normed hidden states.
        khead: ``(w1_t, b1, w2_t, b2)`` as ``khead_logits`` takes them (for ``horizon="khead"``).
        horizon: ``khead``, ``entropy`` or ``fixed``; ``entropy_bounds``: (low, high) nats.
        reuse_prefix: eager steps (the next forward starts after the reused prefix).
        state: the ``STEP_STATE`` tensors of a ``fluid_rt.decode.batch.Batch`` (contiguous, CPU);
            ``host`` gets each row's host read (``HOST_FIELDS``).
    """
    w1_t, b1, w2_t, b2 = khead if khead is not None else (None,) * 4
    low, high = entropy_bounds
    op_library().elastic_step(
        *stats,
        hidden,
        w1_t,
        b1,
        w2_t,
        b2,
        HORIZON_KINDS[horizon],
        float(low),
        float(high),
        bool(score_is_entropy),
        bool(reuse_prefix),
        int(mask_token_id),
        *(state[name] for name in STEP_STATE),
    )


def ar_step(pred: torch.Tensor, lse: torch.Tensor, state: Mapping[str, torch.Tensor]) -> None:
    """Greedy AR's step (``fluid_rt.decode.phases.commit_ar``) in one call: every row not done
    commits ``pred [B]`` (int64, the argmax after its last slot) as a one-token block, in place;
    ``lse [B]`` float32 becomes ``lse_sum``; ``host`` gets each row's host read (``HOST_FIELDS``,
    no trace records). ``state``: the ``AR_STEP_STATE`` tensors of a ``Batch``."""
    op_library().ar_step(pred, lse, *(state[name] for name in AR_STEP_STATE))
