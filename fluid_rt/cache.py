"""Static KV cache: preallocated per-layer K/V for ``max_batch`` rows of ``max_seq`` positions.

The model writes the K/V of the tokens it is fed at positions ``seqlens[row] ..`` but never moves
``seqlens``: committing tokens (advancing a row's length) is the decoder's step. Shapes never change,
so forwards on this cache capture in CUDA graphs.
"""

from __future__ import annotations

import torch

from fluid_rt.config import ModelConfig


class KVCache:
    """``k, v [num_layers, max_batch, max_seq, num_kv_heads, head_dim]`` in ``dtype``;
    ``seqlens [max_batch]`` int32 (committed tokens per row), all on ``device``."""

    def __init__(
        self, cfg: ModelConfig, max_batch: int, max_seq: int, dtype: torch.dtype = torch.float32, device="cpu"
    ):
        if max_batch < 1 or max_seq < 1:
            raise ValueError(f"max_batch, max_seq: must be positive, got {max_batch}, {max_seq}")
        shape = (cfg.num_layers, max_batch, max_seq, cfg.num_kv_heads, cfg.head_dim)
        self.cfg = cfg
        self.dtype = dtype
        self.device = torch.device(device)
        # Zero-filled (not empty) so a row's unwritten slots never hold NaN/Inf garbage.
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.seqlens = torch.zeros(max_batch, dtype=torch.int32, device=self.device)
        self.device = self.k.device  # normalized ("cuda" -> "cuda:0")

    @property
    def max_batch(self) -> int:
        return self.k.shape[1]

    @property
    def capacity(self) -> int:
        """Positions per row (``max_seq``)."""
        return self.k.shape[2]

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Forget the contents of ``rows`` (all rows when None): their lengths go back to 0.

        The K/V values themselves are left in place; attention never reads past ``seqlens``."""
        if rows is None:
            self.seqlens.zero_()
        else:
            rows = torch.as_tensor(rows, device=self.device).long()
            self.seqlens.index_fill_(0, rows, 0)

    def __repr__(self) -> str:
        return (
            f"KVCache(layers={self.k.shape[0]}, max_batch={self.max_batch}, "
            f"capacity={self.capacity}, kv_heads={self.k.shape[3]}, head_dim={self.k.shape[4]}, "
            f"dtype={self.dtype}, device={self.device})"
        )
