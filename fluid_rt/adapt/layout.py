"""Stage I / Stage II sample layouts: where masks are inserted, what they are labelled, what they
see (docs/spec/training.md).

The spec's Stage I sample is one expanded sequence: after every selected response token x_i, k
mask slots at position ids i+1 .. i+k, mask o labelled x_{i+o+1}. Its attention bias lets a main
token see only main tokens at or before it, and a draft slot see the main tokens up to x_i plus the
earlier slots of its own block. So the main tokens' states are exactly the base model's (with the
gated adapter they are computed without any adapter weight), and we split the expanded sequence
into

* the main sequence, run once by the frozen base model (its K/V are constants for training), and
* the draft rows (all blocks of a sample concatenated), run with gradients, attending to the main
  K/V up to their trigger and to their own block's earlier rows (``draft_bias``).

Main-token CE is left out of the loss: under the gate no trainable weight touches a main token's
forward, so its gradient is exactly zero (it would only add a constant to the reported loss).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")


@dataclass
class DraftLayout:
    """The draft rows of one sample. Per row r: ``ids[r]`` (the mask id, or a restored token),
    ``positions[r]`` (position id i + o), ``trigger[r]`` (the main index i it hangs off),
    ``block[r]`` (block number), ``offset[r]`` (o, 1-based), ``labels[r]`` (x_{i+o+1})."""

    ids: list[int]
    positions: list[int]
    trigger: list[int]
    block: list[int]
    offset: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def insert_masks(
    tokens: list[int],
    response_start: int,
    *,
    mask_id: int,
    max_k: int,
    select_prob: float,
    rng: random.Random,
    restore: bool = True,
    fixed_k: bool = False,
    vocab_size: int | None = None,
    special_ids: frozenset[int] = frozenset(),
) -> DraftLayout:
    """Stage I (``fixed_k=False``, ``restore=True``) or Stage II (``fixed_k=True``,
    ``restore=False``) draft rows for ``tokens`` = prompt + response.

    Candidate triggers are response tokens x_i, i >= response_start - 1 (the last prompt token
    triggers the first answer tokens' block, as prefill does at decode), each selected with
    ``select_prob``; a block gets k ~ U{1..max_k} masks (exactly ``max_k`` when ``fixed_k``), cut
    where the label x_{i+o+1} would run past the sequence (Stage II skips such triggers).
    Restoration: per block r ~ U(0, 1); each slot is replaced with probability r by its true token
    x_{i+o} (90%) or a random non-special token (10%); it keeps its label."""
    n = len(tokens)
    lay = DraftLayout([], [], [], [], [], [])
    block = 0
    for i in range(max(response_start - 1, 0), n - 2):
        if rng.random() >= select_prob:
            continue
        k = max_k if fixed_k else rng.randint(1, max_k)
        room = n - 2 - i  # labels x_{i+o+1} need i + o + 1 <= n - 1
        if fixed_k and room < k:
            continue
        k = min(k, room)
        r = rng.random() if restore else 0.0
        for o in range(1, k + 1):
            token = mask_id
            if restore and rng.random() < r:
                token = tokens[i + o]
                if rng.random() < 0.1 and vocab_size:
                    token = _random_token(rng, vocab_size, special_ids | {mask_id})
            lay.ids.append(token)
            lay.positions.append(i + o)
            lay.trigger.append(i)
            lay.block.append(block)
            lay.offset.append(o)
            lay.labels.append(tokens[i + o + 1])
        block += 1
    return lay


def _random_token(rng: random.Random, vocab_size: int, exclude: set) -> int:
    while True:
        t = rng.randrange(vocab_size)
        if t not in exclude:
            return t


def draft_bias(
    trigger: torch.Tensor, block: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, main_len: int
) -> torch.Tensor:
    """Additive attention bias ``[B, 1, R, main_len + R]`` float32 of the draft rows over
    [main keys, draft keys]: 0 where a row may look, -inf elsewhere.

    trigger, block, positions: ``[B, R]`` int64; valid: ``[B, R]`` bool (padding rows are not
    valid: they see main key 0 only, so their softmax stays finite, and nobody sees them)."""
    j = torch.arange(main_len, device=trigger.device)
    sees_main = j[None, None, :] <= trigger[:, :, None]  # [B, R, L]
    same_block = block[:, :, None] == block[:, None, :]
    earlier = positions[:, None, :] <= positions[:, :, None]
    sees_draft = same_block & earlier & valid[:, None, :] & valid[:, :, None]
    pad_row = ~valid
    sees_main = torch.where(pad_row[:, :, None], j[None, None, :] == 0, sees_main)
    allowed = torch.cat([sees_main, sees_draft], dim=-1)
    bias = torch.zeros(allowed.shape, dtype=torch.float32, device=trigger.device)
    return bias.masked_fill_(~allowed, NEG_INF)[:, None]


@dataclass
class Batch:
    """Padded tensors of B samples: main ``[B, L]`` (+ ``main_len``), draft rows ``[B, R]``."""

    main_ids: torch.Tensor
    main_len: torch.Tensor
    ids: torch.Tensor
    positions: torch.Tensor
    trigger: torch.Tensor
    block: torch.Tensor
    offset: torch.Tensor
    labels: torch.Tensor  # -100 at padding rows
    valid: torch.Tensor

    @property
    def num_draft_rows(self) -> int:
        return int(self.valid.sum())


def collate(samples: list[list[int]], layouts: list[DraftLayout], pad_id: int) -> Batch:
    """Pad B (tokens, layout) pairs into a ``Batch``; blocks are numbered per sample."""
    B = len(samples)
    L = max(len(s) for s in samples)
    R = max(1, max(len(lay) for lay in layouts))
    main = torch.full((B, L), pad_id, dtype=torch.int64)
    z = {
        name: torch.zeros((B, R), dtype=torch.int64)
        for name in ("ids", "positions", "trigger", "block", "offset")
    }
    labels = torch.full((B, R), -100, dtype=torch.int64)
    valid = torch.zeros((B, R), dtype=torch.bool)
    for b, (s, lay) in enumerate(zip(samples, layouts)):
        main[b, : len(s)] = torch.tensor(s)
        n = len(lay)
        if n == 0:
            continue
        for name in z:
            z[name][b, :n] = torch.tensor(getattr(lay, name))
        labels[b, :n] = torch.tensor(lay.labels)
        valid[b, :n] = True
    z["block"] = torch.where(valid, z["block"], -1)
    return Batch(
        main,
        torch.tensor([len(s) for s in samples]),
        z["ids"],
        z["positions"],
        z["trigger"],
        z["block"],
        z["offset"],
        labels,
        valid,
    )
