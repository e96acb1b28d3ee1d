"""Horizon and commit policies of elastic-horizon decoding (docs/spec/decoding.md).

A horizon policy picks K, the number of masked positions a new block drafts, from the state at the
last committed token; a commit policy says which drafted positions are confident enough to keep.
Every policy reads the one-pass token statistics (``fluid_rt.ops.token_entropy``) or the final
hidden state, so none costs another pass over the logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HORIZONS = ("khead", "entropy", "fixed")
COMMITS = ("confidence", "entropy")


@dataclass(frozen=True)
class HorizonPolicy:
    """How K is chosen for a new block; the result is clamped per row to [min_block, block_size].

    * ``khead``: ``argmax(khead(h_last)) + 1`` (the FLUID reference).
    * ``entropy``: from the entropy H (nats) of the next-token distribution: H <= ``entropy_low``
      gives ``block_size`` (sprint), H >= ``entropy_high`` gives ``min_block`` (downshift), linear
      in between, rounded to the nearest integer.
    * ``fixed``: ``block_size`` every block.
    """

    kind: str = "khead"
    entropy_low: float = 0.5
    entropy_high: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in HORIZONS:
            raise ValueError(f"horizon: expected one of {HORIZONS}, got {self.kind!r}")
        if not (0 <= self.entropy_low < self.entropy_high) or not math.isfinite(self.entropy_high):
            raise ValueError(
                "entropy horizon bounds must satisfy 0 <= entropy_low < entropy_high < inf, got "
                f"{self.entropy_low}, {self.entropy_high}"
            )

    def choose(
        self,
        hidden: torch.Tensor,
        entropy: torch.Tensor,
        min_block: torch.Tensor,
        block_size: torch.Tensor,
        khead=None,
    ) -> torch.Tensor:
        """K per row (int32 [B]) from the normed hidden state [B, H] and the next-token entropy
        [B] at the last committed token; ``min_block``/``block_size`` are int32 [B]. Device ops
        only (no host sync), so a CUDA graph can capture it."""
        if self.kind == "khead":
            if khead is None:
                raise ValueError("horizon 'khead' needs a K-head: pass head=... or pick another horizon")
            k = khead.propose(hidden)
        elif self.kind == "entropy":
            frac = ((self.entropy_high - entropy) / (self.entropy_high - self.entropy_low)).clamp(0, 1)
            k = torch.round(min_block + (block_size - min_block) * frac)
        else:
            k = block_size
        return torch.minimum(torch.maximum(k.to(torch.int32), min_block), block_size)


@dataclass(frozen=True)
class CommitPolicy:
    """Which drafted positions are kept: ``confidence`` keeps max-prob > threshold (the reference),
    ``entropy`` keeps entropy < threshold (nats). Thresholds are per row, passed to the kernel."""

    kind: str = "confidence"

    def __post_init__(self) -> None:
        if self.kind not in COMMITS:
            raise ValueError(f"commit: expected one of {COMMITS}, got {self.kind!r}")

    @property
    def score_is_entropy(self) -> bool:
        return self.kind == "entropy"

    def score(self, stats) -> torch.Tensor:
        """The per-position score the commit kernel compares with the threshold."""
        return stats.entropy if self.score_is_entropy else stats.max_prob
