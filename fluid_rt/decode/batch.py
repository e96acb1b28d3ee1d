"""``Batch``: the state of one ``Decoder.generate`` call, and its one host read per step.

Every per-row value the steps update lives in a device tensor, row i for prompt ``seq[i]``, updated
in place so that one CUDA graph can replay a whole step over it. The host side (results, traces,
forward counts) is filled by ``collect``, the step's one sync.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fluid_rt import ops
from fluid_rt.decode.config import DecodeConfig
from fluid_rt.decode.trace import RECORDS_PER_STEP, StepTraces

_F32_EXPONENT = 0x7F800000  # all exponent bits set: a float32 inf or NaN

# Streaming: called with (index of the prompt, newly committed token ids) as blocks commit.
OnCommit = Callable[[int, list[int]], None]


@dataclass
class Generation:
    """One sequence's result. ``trace`` has one entry per block: K, draft_passes, committed
    (tokens the block committed before any EOS/length cut, so the last block's may count past
    ``tokens``) and mismatch (first rejected position or None); the reference's, except for the
    last block, whose draft loop ends as soon as the final tokens reach the budget or an EOS.
    ``forwards`` counts the model forwards this sequence took part in."""

    tokens: list[int]
    stop_reason: str
    forwards: int
    trace: list[dict] = field(default_factory=list)
    text: str | None = None

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / max(self.forwards, 1)


class Batch:
    """The rows of one call. Parameters (``budget``, ``block_size``, ``min_block``,
    ``threshold``, ``remask``, ``eos``) and state (``tokens``: the next forward's input;
    ``block``, ``step``, ``passes``, ``horizon``: the block being drafted; ``out``, ``out_len``,
    ``done``; the ``drafting``/``verifying``/``restart`` flags; ``final_pred``: the verify's
    predictions that draft passes already made; ``start``: the first input slot of the next eager
    forward) are device tensors with one row per sequence. A finished row is either dropped
    (``keep``) or, under a CUDA graph, left in place and ``retired`` (its flags are all off, so
    every step leaves it as it is)."""

    def __init__(self, cfgs: list[DecodeConfig], mask_id: int, device, khead=None) -> None:
        n, i32, i64 = len(cfgs), torch.int32, torch.int64
        bs = max(c.block_size for c in cfgs)
        self.cfgs, self.mask_id, self.khead = cfgs, mask_id, khead
        self.mode = cfgs[0].mode
        self.horizon_policy, self.commit_policy = cfgs[0].horizon_policy(), cfgs[0].commit_policy()
        # Host side, per prompt.
        self.results: list[Generation | None] = [None] * n
        self.traces: list[list[dict]] = [[] for _ in range(n)]
        self.forwards = [0] * n
        # Host side, per row.
        self.seq, self.emitted, self.retired = list(range(n)), [0] * n, [False] * n
        self.needs: list[int] = [1] * n  # eager steps: input slots each row's next forward feeds

        def per_row(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        def full(shape, value, dtype):
            return torch.full(
                shape if isinstance(shape, tuple) else (shape,), value, dtype=dtype, device=device
            )

        self.budget = per_row([c.max_new_tokens for c in cfgs], i32)
        self.block_size = per_row([c.block_size for c in cfgs], i32)
        self.min_block = per_row([c.min_block for c in cfgs], i32)
        self.threshold = per_row([c.commit_threshold for c in cfgs], torch.float32)
        self.remask = per_row([c.remask for c in cfgs], torch.bool)
        n_eos = max(1, max(len(c.eos_token_ids) for c in cfgs))
        self.eos = per_row([list(c.eos_token_ids) + [-1] * (n_eos - len(c.eos_token_ids)) for c in cfgs], i64)
        self.cache_rows = torch.arange(n, dtype=i32, device=device)
        self.tokens = full((n, 1 + 2 * bs), mask_id, i64)
        self.out = full((n, max(c.max_new_tokens for c in cfgs)), -1, i64)
        self.out_len, self.seqlens, self.pending = full(n, 0, i32), full(n, 0, i32), full(n, 0, i64)
        self.block = full((n, bs), mask_id, i64)
        self.step, self.passes = full(n, 0, i32), full(n, 0, i32)
        self.horizon = self.block_size.clone()
        self.committed, self.mismatch = full(n, 0, i32), full(n, -1, i32)
        self.done, self.drafting = full(n, False, torch.bool), full(n, False, torch.bool)
        self.verifying, self.restart = full(n, False, torch.bool), full(n, False, torch.bool)
        self.final_pred = full((n, bs), -1, i64)
        # Sum of the row's logsumexps in the last forward: finite exactly when all its logits were.
        self.lse_sum = full(n, 0.0, torch.float32)
        self.start = full(n, 0, i32)
        self.position = torch.arange(bs, device=device)[None, :]  # block positions 0..bs-1
        self.trace = StepTraces(n, device)
        # The host read the CPU step ops pack (ops.HOST_FIELDS); read_host(packed=True) reads it.
        self.host = full((n, ops.HOST_FIELDS), 0, i32)

    @property
    def rows(self) -> int:
        return len(self.seq)

    @property
    def live(self) -> int:
        return self.retired.count(False)

    def _tensors(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def snapshot(self) -> dict:
        """A copy of the device state (a CUDA graph's warm-up step is undone with it)."""
        return {k: v.clone() for k, v in self._tensors().items()} | {"trace": self.trace.data.clone()}

    def restore(self, state: dict) -> None:
        for k, v in self._tensors().items():
            v.copy_(state[k])
        self.trace.data.copy_(state["trace"])

    def keep(self, idx: list[int]) -> None:
        """Drop the rows not in ``idx`` so they stop costing work."""
        index = torch.tensor(idx, dtype=torch.long, device=self.out.device)
        for name in ("seq", "emitted", "retired", "needs"):
            setattr(self, name, [getattr(self, name)[i] for i in idx])
        for name, value in self._tensors().items():
            if name != "position":
                setattr(self, name, value.index_select(0, index))
        self.trace.data = self.trace.data.index_select(0, index)

    def count_forward(self) -> None:
        for s, gone in zip(self.seq, self.retired):
            if not gone:
                self.forwards[s] += 1

    def step_state(self) -> dict[str, torch.Tensor]:
        """The tensors the CPU step ops read and write (``ops.STEP_STATE``, ``ops.AR_STEP_STATE``)."""
        return {name: self.trace.data if name == "trace" else getattr(self, name) for name in ops.STEP_STATE}

    def slots_needed(self) -> torch.Tensor:
        """Input slots each row's next eager forward feeds: up to K for a draft pass (outputs
        0..K-1), K + bs for a verify (its outputs 0..K-1, then the fused next draft up to
        K + bs - 1), bs for a block that restarts (its K is not known yet); minus the reused
        prefix."""
        bs = self.block.shape[1]
        need = torch.where(self.verifying, self.horizon + bs, self.horizon)
        return torch.where(self.restart, bs, need) - self.start


@dataclass
class HostRow:
    """What the host reads of one row after a step."""

    records: list
    out_len: int
    done: bool
    need: int
    lse_bits: int


def read_host(b: Batch, trim: bool, packed: bool = False) -> list[HostRow]:
    """The step's one host sync: every row's trace records, output length, done flag, next eager
    width (``trim``) and logsumexp sum (as its float32 bits), in one transfer. ``packed``: a CPU
    step op (``ops.elastic_step``/``ops.ar_step``) left them in ``b.host`` (each kind of tensor op
    after a CPU forward starts cold: packing them here cost ~0.2 ms a step)."""
    if packed:
        return [_host_row(r, len(StepTraces.FIELDS) * RECORDS_PER_STEP) for r in b.host.tolist()]
    need = b.slots_needed() if trim else torch.ones_like(b.out_len)
    trace = b.trace.data.flatten(1)
    n_trace = trace.shape[1]
    rows = torch.cat(
        [
            trace,
            b.out_len[:, None],
            b.done[:, None].to(torch.int32),
            need[:, None],
            b.lse_sum.view(torch.int32)[:, None],
        ],
        1,
    ).tolist()
    return [_host_row(r, n_trace) for r in rows]


def _host_row(r: list[int], n_trace: int) -> HostRow:
    return HostRow(
        StepTraces.records(r[:n_trace]), r[n_trace], bool(r[n_trace + 1]), r[n_trace + 2], r[n_trace + 3]
    )


def check_finite(b: Batch, i: int, row: HostRow, dtype: torch.dtype) -> None:
    if (row.lse_bits & _F32_EXPONENT) == _F32_EXPONENT:  # its float32 bits: inf or NaN
        cause = (
            "float16 overflowed? (try bfloat16 or float32)"
            if dtype == torch.float16
            else "broken weights or config?"
        )
        raise FloatingPointError(
            f"prompt {b.seq[i]}: the model produced non-finite logits (NaN "
            f"or inf) after {row.out_len} new tokens: {cause}"
        )


def collect(b: Batch, host: list[HostRow], on_commit: OnCommit | None, dtype: torch.dtype) -> list[int]:
    """Record each live row's settled blocks and new tokens, stream them, and retire the rows
    that finished (a row with non-finite logits raises ``FloatingPointError``). Returns the
    indices of the rows still running."""
    running = []
    for i, row in enumerate(host):
        if b.retired[i]:
            continue
        check_finite(b, i, row, dtype)
        s = b.seq[i]
        if b.mode == "elastic":
            b.traces[s].extend(r.as_dict() for r in row.records)
        if on_commit is not None and row.out_len > b.emitted[i]:
            on_commit(s, b.out[i, b.emitted[i] : row.out_len].tolist())
            b.emitted[i] = row.out_len
        if row.done:
            tokens = b.out[i, : row.out_len].tolist()
            eos = bool(tokens) and tokens[-1] in b.cfgs[s].eos_token_ids
            b.results[s] = Generation(tokens, "eos" if eos else "length", b.forwards[s], b.traces[s])
            b.retired[i] = True
        else:
            running.append(i)
            b.needs[i] = max(1, row.need)
    return running
