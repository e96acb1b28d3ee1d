"""The two objectives: Stage I's mean draft CE and Stage II's K-head labels and soft-target loss
(docs/spec/training.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fluid_rt.adapt.layout import Batch, draft_bias
from fluid_rt.adapt.model import (
    FrozenBase,
    GatedAdapter,
    draft_hidden,
    draft_logits,
    main_pass,
)


def stage1_loss(base: FrozenBase, adapter: GatedAdapter, batch: Batch) -> torch.Tensor:
    """One mean cross-entropy over the labelled draft rows (masks and restored slots). Main
    tokens are left out: the gate keeps every trainable weight off their forward, so their CE has
    zero gradient."""
    main_kv, _ = main_pass(base, batch.main_ids)
    bias = draft_bias(batch.trigger, batch.block, batch.positions, batch.valid, batch.main_ids.shape[1])
    hidden = draft_hidden(base, adapter, batch.ids, batch.positions, bias, main_kv)
    logits = draft_logits(base, hidden[batch.valid])
    return F.cross_entropy(logits.float(), batch.labels[batch.valid])


def khead_labels(ce: torch.Tensor, threshold: float = 2.8) -> torch.Tensor:
    """``ce [N, K]`` (per-mask CE of each trigger's K masks, in order) -> k* ``[N]`` int64: the
    largest k in 1..K whose mean CE over the first k masks is below ``threshold``; 1 if none."""
    K = ce.shape[-1]
    prefix_mean = ce.cumsum(-1) / torch.arange(1, K + 1, dtype=ce.dtype, device=ce.device)
    ks = torch.arange(1, K + 1, device=ce.device).expand_as(ce)
    below = torch.where(prefix_mean < threshold, ks, torch.ones_like(ks))
    return below.max(-1).values


def soft_targets(k_star: torch.Tensor, num_classes: int, sigma: float = 1.5) -> torch.Tensor:
    """A Gaussian over classes 0..K-1 centred on k* - 1 with ``sigma``, normalised: ``[N, K]``."""
    c = torch.arange(num_classes, dtype=torch.float32, device=k_star.device)
    w = torch.exp(-0.5 * ((c[None] - (k_star[:, None].float() - 1)) / sigma) ** 2)
    return w / w.sum(-1, keepdim=True)


def khead_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -(targets * F.log_softmax(logits.float(), -1)).sum(-1).mean()


def new_khead(hidden_size: int, max_k: int, seed: int = 0) -> nn.Sequential:
    """``Linear(H, H/4) -> GELU -> Linear(H/4, max_k)``: its state dict keys ``0.*`` / ``2.*`` are
    the reference's ``diffusion_k_head.*`` without the prefix."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(hidden_size, hidden_size // 4), nn.GELU(), nn.Linear(hidden_size // 4, max_k)
    )


@torch.no_grad()
def stage2_features(base: FrozenBase, adapter: GatedAdapter, batch: Batch, max_k: int):
    """For a Stage II batch (``insert_masks(fixed_k=True, restore=False)``: every block has
    exactly ``max_k`` masks, offsets 1..max_k in order): the trigger hidden states ``[N, H]``
    (the base's final normed hidden at x_i: what the decoder feeds the K-head) and the per-mask
    CE ``[N, max_k]``."""
    main_kv, main_h = main_pass(base, batch.main_ids)
    bias = draft_bias(batch.trigger, batch.block, batch.positions, batch.valid, batch.main_ids.shape[1])
    hidden = draft_hidden(base, adapter, batch.ids, batch.positions, bias, main_kv)
    v = batch.valid
    ce = F.cross_entropy(draft_logits(base, hidden[v]).float(), batch.labels[v], reduction="none")
    b_idx = torch.arange(v.shape[0])[:, None].expand_as(v)[v]
    first = batch.offset[v] == 1
    trig_h = main_h[b_idx[first], batch.trigger[v][first]]
    return trig_h.float(), ce.view(-1, max_k)
