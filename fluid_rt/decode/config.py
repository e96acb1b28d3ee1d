"""``DecodeConfig``: the parameters of one decode request, with every check and default.

The CLI derives its ``--input`` request keys and flag defaults from these fields, so a request is
checked here once, whichever way it arrives (Python, flags, a JSON line). Values keep their type:
nothing is coerced (``bool("false")`` is True, ``int(2.9)`` is 2).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields

from fluid_rt.config import is_int
from fluid_rt.policies import COMMITS, HORIZONS, CommitPolicy, HorizonPolicy

MODES = ("elastic", "ar")
# The commit policy's threshold default: a max probability, or an entropy in nats.
DEFAULT_THRESHOLD = {"confidence": 0.9, "entropy": 0.3}


def _show(value) -> str:
    """A short rendering of a rejected value (a JSON line may hold a huge one)."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(value)


@dataclass(frozen=True)
class DecodeConfig:
    """Decode parameters of one request (docs/spec/decoding.md).

    * ``mode``: ``"elastic"`` or ``"ar"``; None picks from the model: elastic when the decoder
      has a K-head, else ar (``Decoder.resolve``).
    * ``horizon``: how K is chosen (``policies.HorizonPolicy``); None: ``khead`` when the decoder
      has a K-head, else ``entropy``.
    * ``threshold``: on the max probability (in [0, 1]) for ``commit="confidence"``, on the
      entropy in nats (>= 0) for ``commit="entropy"``; None: the commit policy's default
      (``DEFAULT_THRESHOLD``: 0.9, 0.3 nats). ``commit_threshold`` is the value used.
    * ``eos_token_ids``: an int or a sequence of ints (kept as a tuple); ``()`` decodes to
      ``max_new_tokens`` without stopping early.

    Requests with different thresholds, block sizes, remask, budgets and EOS ids decode in one
    batch; the resolved ``mode``, ``horizon``, ``commit`` and entropy bounds must agree within a
    batch (``batch_key``)."""

    mode: str | None = None
    max_new_tokens: int = 64
    block_size: int = 16
    min_block: int = 4
    threshold: float | None = None
    remask: bool = True
    horizon: str | None = None
    commit: str = "confidence"
    eos_token_ids: tuple[int, ...] = ()
    entropy_low: float = 0.5
    entropy_high: float = 3.0

    def __post_init__(self) -> None:
        for name, choices in (("mode", MODES), ("horizon", HORIZONS)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {_show(value)}")
        if self.commit not in COMMITS:
            raise ValueError(f"commit: expected one of {', '.join(COMMITS)}, got {_show(self.commit)}")
        for name in ("max_new_tokens", "block_size", "min_block"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name}: expected an integer >= 1, got {_show(value)}")
        if self.min_block > self.block_size:
            raise ValueError(
                f"need 1 <= min_block <= block_size, got min_block={self.min_block}, "
                f"block_size={self.block_size}"
            )
        if not isinstance(self.remask, bool):
            raise ValueError(f"remask: expected true or false, got {_show(self.remask)}")  # noqa: TRY004
        object.__setattr__(self, "eos_token_ids", self._eos_tuple(self.eos_token_ids))
        self._check_threshold()
        for name in ("entropy_low", "entropy_high"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name}: expected a finite number, got {_show(getattr(self, name))}")
        self.horizon_policy()  # checks 0 <= entropy_low < entropy_high

    @staticmethod
    def _eos_tuple(value) -> tuple[int, ...]:
        if is_int(value):
            return (value,)
        if isinstance(value, (list, tuple)) and all(map(is_int, value)):
            return tuple(value)
        raise ValueError(f"eos_token_ids: expected an integer or a list of integers, got {_show(value)}")

    def _check_threshold(self) -> None:
        t = self.threshold
        if t is None:
            return
        if not _is_number(t):
            raise ValueError(f"threshold: expected a finite number, got {_show(t)}")
        if self.commit == "confidence" and not 0 <= t <= 1:
            raise ValueError(
                f"threshold: with commit confidence it is a max probability, in "
                f"[0, 1]; got {t} (use commit entropy for a threshold in nats)"
            )
        if self.commit == "entropy" and t < 0:
            raise ValueError(f"threshold: with commit entropy it is an entropy in nats, >= 0; got {t}")

    @property
    def commit_threshold(self) -> float:
        """The threshold the commit kernel compares with: ``threshold`` or the policy's default."""
        return float(DEFAULT_THRESHOLD[self.commit] if self.threshold is None else self.threshold)

    def resolved(self, has_khead: bool) -> DecodeConfig:
        """This config with ``mode`` and ``horizon`` picked for a decoder with or without a
        K-head, where they are None."""
        mode = self.mode or ("elastic" if has_khead else "ar")
        horizon = self.horizon or ("khead" if has_khead else "entropy")
        return dataclasses.replace(self, mode=mode, horizon=horizon)

    def horizon_policy(self) -> HorizonPolicy:
        return HorizonPolicy(self.horizon or "khead", self.entropy_low, self.entropy_high)

    def commit_policy(self) -> CommitPolicy:
        return CommitPolicy(self.commit)

    def batch_key(self) -> tuple:
        """Requests with equal keys (of resolved configs) can share a batch."""
        return (self.mode, self.horizon, self.commit, self.entropy_low, self.entropy_high)


FIELDS = tuple(f.name for f in fields(DecodeConfig))


def default_of(name: str):
    """The default of a ``DecodeConfig`` field (for help texts)."""
    return next(f.default for f in fields(DecodeConfig) if f.name == name)
