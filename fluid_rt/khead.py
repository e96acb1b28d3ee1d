"""FLUID's K-head: predicts the next block's horizon K from the hidden state of the last token.

``Linear(H, H/4) -> GELU (exact erf form) -> Linear(H/4, max_k)``; class j means K = j + 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fluid_rt import ops

PREFIX = "diffusion_k_head."


class KHead:
    """Holds the K-head weights (``diffusion_k_head.{0,2}.{weight,bias}``, prefix optional)."""

    def __init__(self, state_dict: dict, dtype: torch.dtype = torch.float32, device="cpu"):
        sd = {k[len(PREFIX) :] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}
        want = {"0.weight", "0.bias", "2.weight", "2.bias"}
        if set(sd) != want:
            raise ValueError(
                f"K-head state dict: keys {sorted(sd)}, expected {sorted(PREFIX + k for k in want)}"
            )
        w1, b1, w2, b2 = (
            sd[k].to(dtype=dtype, device=device).contiguous()
            for k in ("0.weight", "0.bias", "2.weight", "2.bias")
        )
        if (
            w1.dim() != 2
            or b1.shape != (w1.shape[0],)
            or w2.dim() != 2
            or w2.shape[1] != w1.shape[0]
            or b2.shape != (w2.shape[0],)
        ):
            raise ValueError(
                f"K-head state dict: inconsistent shapes 0.weight {tuple(w1.shape)}, "
                f"0.bias {tuple(b1.shape)}, 2.weight {tuple(w2.shape)}, "
                f"2.bias {tuple(b2.shape)}"
            )
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        # On the CPU in float32 the K-head is ops.khead_logits, the code the CPU decode step runs
        # (within its size bounds; a larger head stays on torch, and its decode on the phases).
        self.op_weights = None
        fits = w1.shape[0] <= ops.KHEAD_MAX_INNER and w2.shape[0] <= ops.KHEAD_MAX_K
        if w1.device.type == "cpu" and dtype == torch.float32 and fits:
            self.op_weights = (w1.t().contiguous(), b1, w2.t().contiguous(), b2)
        self.hidden_size = w1.shape[1]
        self.max_k = w2.shape[0]
        self.dtype = dtype
        self.device = torch.device(device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] -> float32 [..., max_k] (class j = horizon j + 1)."""
        if self.op_weights is not None and hidden.device.type == "cpu":
            h = hidden.to(self.dtype).reshape(-1, hidden.shape[-1]).contiguous()
            return ops.khead_logits(h, *self.op_weights).view(*hidden.shape[:-1], self.max_k)
        h = F.gelu(F.linear(hidden.to(self.dtype), self.w1, self.b1))  # exact erf GELU
        return F.linear(h, self.w2, self.b2).float()

    __call__ = logits

    def propose(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, H] -> proposed horizon int32 [B] in ``1 .. max_k`` (argmax + 1, unclamped)."""
        return (self.logits(hidden).argmax(dim=-1) + 1).to(torch.int32)

    def __repr__(self) -> str:
        return f"KHead(hidden={self.hidden_size}, max_k={self.max_k}, dtype={self.dtype})"
