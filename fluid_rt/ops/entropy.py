"""token_entropy: per-row softmax statistics of ``logits / temperature`` in one pass over the logits.

Kernels: ``csrc/entropy/`` (CPU: OpenMP + one vector kernel per CPU path, avx512 / avx2 / portable;
CUDA: one or several CTAs per row). Schema ``fluid_rt::token_entropy(Tensor logits, float
temperature=1.0) -> (Tensor entropy, Tensor max_prob, Tensor argmax, Tensor logsumexp)``.

Non-finite rows (the rules below are applied to the logits, in this order, per row):

* any NaN: ``entropy``, ``max_prob`` and ``logsumexp`` are NaN and ``argmax`` is the index of the
  first NaN (as ``torch.argmax`` does);
* otherwise, any ``+inf``: the limit distribution, uniform over the ``+inf`` entries: ``entropy =
  log(count)``, ``max_prob = 1 / count``, ``argmax`` = the first ``+inf``, ``logsumexp = +inf``;
* otherwise, every entry ``-inf``: ``logsumexp = -inf``, ``entropy = max_prob = NaN``, ``argmax = 0``;
* otherwise ``-inf`` entries have probability 0 and the finite entries give the usual statistics.

Finite logits never overflow inside the op (it works with ``(x - max) / temperature``); only
``logsumexp`` itself can round to ``+-inf`` when its true value is beyond float32.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from fluid_rt.ops._backend import op_library

__all__ = ["token_entropy", "TokenStats"]


class TokenStats(NamedTuple):
    """Outputs of :func:`token_entropy`, each of shape ``logits.shape[:-1]``.

    entropy:   float32, ``-sum p log p`` (nats) of ``p = softmax(logits / temperature)``
    max_prob:  float32, ``max p``
    argmax:    int64, index of the largest logit (the first one on ties)
    logsumexp: float32, ``log sum exp(logits / temperature)``
    """

    entropy: torch.Tensor
    max_prob: torch.Tensor
    argmax: torch.Tensor
    logsumexp: torch.Tensor


@torch.library.register_fake("fluid_rt::token_entropy")
def _token_entropy_fake(logits: torch.Tensor, temperature: float = 1.0):
    if logits.dim() < 1:
        raise ValueError("logits: expected a tensor of shape [..., V], got a 0-d tensor")
    lead = logits.shape[:-1]
    f32 = dict(dtype=torch.float32, device=logits.device)
    return (
        logits.new_empty(lead, **f32),
        logits.new_empty(lead, **f32),
        logits.new_empty(lead, dtype=torch.int64, device=logits.device),
        logits.new_empty(lead, **f32),
    )


def token_entropy(logits: torch.Tensor, temperature: float = 1.0) -> TokenStats:
    """Entropy, max probability, argmax and logsumexp of ``softmax(logits / temperature)`` per row.

    Args:
        logits: ``[..., V]`` float32, bfloat16 or float16 (CPU or CUDA), ``V >= 1``. The last dim must
            have stride 1 and the leading dims must collapse to a single row stride (any contiguous
            tensor, or a slice such as ``x[:, 3, :]`` of a contiguous ``[B, T, V]``); otherwise
            ValueError. Math is float32 (bf16/fp16 are converted on load), one pass over each row.
        temperature: finite, ``> 0`` (ValueError otherwise).

    Returns:
        :class:`TokenStats` ``(entropy, max_prob, argmax, logsumexp)``, each of shape
        ``logits.shape[:-1]`` (0-d for a ``[V]`` input); float32 except ``argmax`` (int64).
        Non-finite rows follow the rules in this module's docstring (NaN first, then +inf, then
        all -inf).
    """
    entropy, max_prob, argmax, lse = op_library().token_entropy(logits, float(temperature))
    return TokenStats(entropy, max_prob, argmax, lse)
