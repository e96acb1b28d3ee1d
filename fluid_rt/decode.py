"""Elastic-horizon (FLUID) decoding and plain greedy AR decoding on one static KV cache.

Every elastic forward has the layout (and, captured in a CUDA graph, the shape)
``[B, 1 + 2 * block_size]``:

    slot 0          the pending token: the last committed one, whose K/V is (re)computed here
    slots 1..bs     the block being drafted or verified (MASK beyond its horizon K)
    slots bs+1..2bs MASK

so the cache always holds the committed tokens but the last, and the output at slot j predicts
block position j (slot 0's output is the spec's ``next_logits``). Eager steps feed each row only
the slots it reads (DEVELOPERS.md, "The decoder"). After each forward, on the
device and without a host round-trip:

1. rows that were verifying commit ``block[:f] + [pred_f]`` (or the whole block) with
   ``verify_commit``; the accepted prefix's K/V is already exact, so there is no recommit forward:
   after a mismatch the corrected token is the next forward's pending token;
2. rows that start a block pick K (policies.HorizonPolicy) from the hidden state at their pending
   slot: slot 0 after a mismatch, slot K when the whole block was accepted (its trailing MASKs
   *are* the next block's first draft pass: verify and draft fused), the last prompt slot after
   prefill (prefill and first draft fused);
3. rows that are drafting apply one ``draft_commit`` update. Its predictions up to the pass's step
   are the verify's (by causality), so a row commits at once, skipping its verify forward, when a
   filled block's mismatch is already shown, or when what it would commit already ends the decode
   (reaches the budget or an EOS).

With ``remask`` every committed token is the greedy argmax given all tokens before it, so the
output equals greedy AR decoding (``mode="ar"``) of the same model.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from fluid_rt import ops
from fluid_rt.cache import KVCache
from fluid_rt.policies import CommitPolicy, HorizonPolicy


@dataclass(frozen=True)
class DecodeConfig:
    """Decode parameters of one request (spec/decoding.md). ``threshold`` is on the max probability
    for ``commit="confidence"`` and on the entropy (nats) for ``commit="entropy"``. Requests with
    different thresholds, block sizes, remask, budgets and EOS ids decode in one batch; ``mode``,
    ``horizon``, ``commit`` and the entropy bounds must agree within a batch."""

    mode: str = "elastic"
    max_new_tokens: int = 64
    block_size: int = 16
    min_block: int = 4
    threshold: float = 0.9
    remask: bool = True
    horizon: str = "khead"
    commit: str = "confidence"
    eos_token_ids: tuple[int, ...] = ()
    entropy_low: float = 0.5
    entropy_high: float = 3.0

    def __post_init__(self) -> None:
        if self.mode not in ("elastic", "ar"):
            raise ValueError(f"mode: expected 'elastic' or 'ar', got {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 1 <= self.min_block <= self.block_size:
            raise ValueError(f"need 1 <= min_block <= block_size, got min_block={self.min_block}, "
                             f"block_size={self.block_size}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        self.horizon_policy(), self.commit_policy()  # validate the policy arguments now

    def horizon_policy(self) -> HorizonPolicy:
        return HorizonPolicy(self.horizon, self.entropy_low, self.entropy_high)

    def commit_policy(self) -> CommitPolicy:
        return CommitPolicy(self.commit)

    def batch_key(self) -> tuple:
        """Requests with equal keys can share a batch."""
        return (self.mode, self.horizon, self.commit, self.entropy_low, self.entropy_high)


@dataclass
class Generation:
    """One sequence's result. ``trace`` has one entry per block: K, draft_passes, committed
    (tokens the block committed before any EOS/length cut) and mismatch (first rejected
    position or None); the reference's, except for the last block, whose draft loop ends as soon
    as the final tokens reach the budget or an EOS. ``forwards`` counts the model forwards this
    sequence took part in."""

    tokens: list[int]
    stop_reason: str
    forwards: int
    trace: list[dict] = field(default_factory=list)
    text: str | None = None

    @property
    def tokens_per_forward(self) -> float:
        return len(self.tokens) / max(self.forwards, 1)


@dataclass
class BatchStats:
    """Wall time of a ``generate`` call and what it produced."""

    forwards: int
    new_tokens: int
    wall_s: float
    prefill_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / max(self.wall_s, 1e-9)


_F32_EXPONENT = 0x7F800000  # all exponent bits set: a float32 inf or NaN


class _Cancelled(Exception):
    """Raised inside a decode whose ``stream`` was closed early: unwinds it at a step boundary."""


# Streaming: called with (index of the prompt, newly committed token ids) as blocks commit.
OnCommit = Callable[[int, list[int]], None]


class _Rows:
    """Per-sequence decode state and parameters of the rows still running, as device tensors.
    Compact: row i of every tensor is prompt ``seq[i]``; finished rows are dropped (``keep``).
    Updated in place, so one CUDA graph can replay a whole step over it."""

    def __init__(self, cfgs: list[DecodeConfig], mask_id: int, device) -> None:
        n, i32, i64 = len(cfgs), torch.int32, torch.int64
        bs = max(c.block_size for c in cfgs)

        def full(shape, value, dtype):
            shape = (shape,) if isinstance(shape, int) else shape
            return torch.full(shape, value, dtype=dtype, device=device)

        def per_row(values, dtype):
            return torch.tensor(values, dtype=dtype, device=device)

        self.seq = list(range(n))
        self.emitted = [0] * n
        # Parameters.
        self.budget = per_row([c.max_new_tokens for c in cfgs], i32)
        self.block_size = per_row([c.block_size for c in cfgs], i32)
        self.min_block = per_row([c.min_block for c in cfgs], i32)
        self.threshold = per_row([c.threshold for c in cfgs], torch.float32)
        self.remask = per_row([c.remask for c in cfgs], torch.bool)
        n_eos = max(1, max(len(c.eos_token_ids) for c in cfgs))
        self.eos = per_row([list(c.eos_token_ids) + [-1] * (n_eos - len(c.eos_token_ids))
                            for c in cfgs], i64)
        # State.
        self.cache_rows = torch.arange(n, dtype=i32, device=device)
        self.tokens = full((n, 1 + 2 * bs), mask_id, i64)  # the next forward's input
        self.out = full((n, max(c.max_new_tokens for c in cfgs)), -1, i64)
        self.out_len, self.seqlens = full(n, 0, i32), full(n, 0, i32)
        self.pending = full(n, 0, i64)
        self.block = full((n, bs), mask_id, i64)
        self.step, self.passes = full(n, 0, i32), full(n, 0, i32)
        self.horizon = self.block_size.clone()
        self.committed, self.mismatch = full(n, 0, i32), full(n, -1, i32)
        self.done, self.drafting = full(n, False, torch.bool), full(n, False, torch.bool)
        self.verifying, self.restart = full(n, False, torch.bool), full(n, False, torch.bool)
        # Per block position: the verify's prediction, once a draft pass saw only final tokens
        # before it (positions 0..step of each pass).
        self.final_pred = full((n, bs), -1, i64)
        # Sum of the row's logsumexps in the last forward: finite exactly when all its logits were.
        self.lse_sum = full(n, 0.0, torch.float32)
        self.start = full(n, 0, i32)  # first input slot of the next (eager) forward
        # The blocks the last step committed, in order, for the host-side trace: up to two per row
        # (a verify, then a draft pass that settled the next block), each [committed a block?, K,
        # draft passes, tokens committed, first mismatch or -1].
        self.verified = full((n, 2, 5), 0, i32)

    def keep(self, idx: list[int]) -> None:
        """Drop finished rows so they stop costing work."""
        index = torch.tensor(idx, dtype=torch.long, device=self.out.device)
        self.seq = [self.seq[i] for i in idx]
        self.emitted = [self.emitted[i] for i in idx]
        for name, value in list(vars(self).items()):
            if isinstance(value, torch.Tensor):
                setattr(self, name, value.index_select(0, index))


class Decoder:
    """Decodes batches of prompts with a model on a static KV cache sized for the requests.

    ``model``: ``fluid_rt.model.Transformer``; ``khead``: ``fluid_rt.khead.KHead`` (needed for
    ``horizon="khead"``); ``mask_token_id``: the FLUID mask token (needed for elastic decoding);
    ``max_seq``: a fixed cache capacity (default: sized per call, up to the model's context);
    ``cuda_graphs``: replay each elastic step as one CUDA graph on a CUDA device.
    """

    def __init__(self, model, *, khead=None, mask_token_id: int | None = None,
                 max_seq: int | None = None, cuda_graphs: bool = True) -> None:
        self.model = model
        self.khead = khead
        self.mask_token_id = mask_token_id
        self.max_seq = max_seq
        self.cuda_graphs = cuda_graphs
        self.cache: KVCache | None = None
        self._graph = None
        # Tests: run the CUDA graph's static-shape step on any device (uncaptured off CUDA).
        self._static_width = False
        # One decode at a time: every call reuses this decoder's cache (``generate`` refuses to
        # start while another call, e.g. an unfinished ``stream``, runs).
        self._busy = threading.Lock()
        self._cancel: threading.Event | None = None  # set: the running call stops at its next step

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- public API ------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]],
                 cfg: DecodeConfig | Sequence[DecodeConfig] = DecodeConfig(),
                 on_commit: OnCommit | None = None) -> tuple[list[Generation], BatchStats]:
        """Decode every prompt (a list of token ids) in one batch, with one ``DecodeConfig`` for
        all or one per prompt. Each row has its own K, step and stop; its tokens and trace equal
        those of its batch-of-one run. ``on_commit(i, ids)`` streams prompt i's new tokens.
        Returns one ``Generation`` per prompt, in order, and the batch's ``BatchStats``."""
        self._claim()
        try:
            return self._generate(prompts, cfg, on_commit)
        finally:
            self._busy.release()

    def _claim(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Decoder is already decoding (a generate() in another thread, "
                               "or a stream() not yet exhausted or closed): it has one KV cache; "
                               "finish or close that call first, or use a second Decoder")

    def _generate(self, prompts, cfg, on_commit, cancel: threading.Event | None = None):
        self._cancel = cancel
        try:
            return self._decode(prompts, cfg, on_commit)
        finally:
            self._cancel = None

    def check(self, prompts: Sequence[Sequence[int]],
              cfg: DecodeConfig | Sequence[DecodeConfig] = DecodeConfig()) -> None:
        """Raise the ValueError ``generate`` would raise for these requests (empty prompts, token
        ids outside the vocabulary, no mask token or K-head where the policy needs one, more
        positions than the cache can hold), without decoding anything."""
        self._positions(*self._requests(prompts, cfg))

    def _requests(self, prompts, cfg) -> tuple[list[list[int]], list[DecodeConfig]]:
        prompts = [[int(t) for t in p] for p in prompts]
        cfgs = [cfg] * len(prompts) if isinstance(cfg, DecodeConfig) else list(cfg)
        self._check(prompts, cfgs)
        return prompts, cfgs

    def _decode(self, prompts, cfg, on_commit):
        prompts, cfgs = self._requests(prompts, cfg)
        n = len(prompts)
        self._ensure_cache(n, self._positions(prompts, cfgs))
        self.cache.reset()
        rows = _Rows(cfgs, self.mask_token_id if self.mask_token_id is not None else 0, self.device)
        self._cfgs, self._graph = cfgs, None
        self._results: list[Generation | None] = [None] * n
        self._traces: list[list[dict]] = [[] for _ in range(n)]
        self._forwards = [0] * n
        start = time.perf_counter()
        if cfgs[0].mode == "ar":
            prefill_s, batch_forwards = self._run_ar(prompts, rows, on_commit)
        else:
            prefill_s, batch_forwards = self._run_elastic(prompts, cfgs[0], rows, on_commit)
        wall = time.perf_counter() - start
        results = self._results
        for i, g in enumerate(results):
            g.forwards, g.trace = self._forwards[i], self._traces[i]
        return results, BatchStats(batch_forwards, sum(len(g.tokens) for g in results), wall,
                                   prefill_s)

    def stream(self, prompt: Sequence[int], cfg: DecodeConfig = DecodeConfig(),
               tokenizer=None) -> Iterator[str | list[int]]:
        """Decode one prompt and yield what each step commits as it commits: text when a
        ``tokenizer`` (``fluid_rt.tokenizer.Tokenizer``) is given, token ids otherwise. The
        generator's return value (``StopIteration.value``) is the ``Generation``. Closing the
        generator early (``break``, ``close()``, garbage collection) stops the decode at its next
        step and waits for it, so the decoder is free again when the loop is left."""
        chunks: queue.Queue = queue.Queue()
        outcome: dict = {}
        cancel = threading.Event()

        def work():
            try:
                (outcome["generation"],), _ = self._generate(
                    [prompt], cfg, lambda _i, ids: chunks.put(ids), cancel)
            except _Cancelled:
                pass
            except BaseException as err:  # re-raised in the caller's thread
                outcome["error"] = err
            finally:
                self._busy.release()
                chunks.put(None)

        text = tokenizer.decode_stream() if tokenizer is not None else None
        self._claim()  # here, so that a busy decoder fails in the caller's thread
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        try:
            while (ids := chunks.get()) is not None:
                piece = text.push(ids) if text is not None else ids
                if piece:
                    yield piece
        finally:  # also when the caller stops early: end the worker before the decoder is reused
            cancel.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]
        if text is not None and (tail := text.flush()):
            yield tail
        generation = outcome["generation"]
        if tokenizer is not None:
            generation.text = tokenizer.decode(generation.tokens)
        return generation

    # -- elastic ---------------------------------------------------------------------------------
    def _run_elastic(self, prompts, cfg: DecodeConfig, rows: _Rows, on_commit):
        mask, dev = self.mask_token_id, self.device
        horizon, commit = cfg.horizon_policy(), cfg.commit_policy()
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=dev)
        # Prefill fused with the first draft pass: [prompt, MASK * bs], right-padded with MASK.
        t0 = time.perf_counter()
        tokens = torch.full((len(prompts), max(map(len, prompts)) + rows.block.shape[1]), mask,
                            dtype=torch.int64)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        tokens = tokens.to(dev)
        rows.pending.copy_(tokens.gather(1, (lengths - 1).long()[:, None]).squeeze(1))
        rows.restart.fill_(True)
        # Logits only from each row's last prompt token on (its slot 0 from here): the vocab
        # matmul of the rest of the prompt would be thrown away.
        frame = (lengths - 1).long()[:, None] + torch.arange(rows.block.shape[1], device=dev)
        logits, hidden = self._forward(tokens, rows, logits_slots=frame)  # at positions 0..
        hidden = hidden.gather(1, frame[:, :, None].expand(-1, -1, hidden.shape[-1]))
        rows.seqlens.copy_(lengths - 1)  # the cache holds the prompt but its last (pending) token
        self._advance(rows, logits, hidden, torch.zeros_like(lengths), horizon, commit)
        prefill_s = time.perf_counter() - t0
        batch_forwards = 1
        self._count_forward(rows)
        while self._collect(rows, on_commit):
            self._elastic_step(rows, horizon, commit)
            batch_forwards += 1
            self._count_forward(rows)
        return prefill_s, batch_forwards

    def _elastic_step(self, rows: _Rows, horizon: HorizonPolicy, commit: CommitPolicy) -> None:
        """One steady-state step: forward [pending, block, MASK] and advance every row."""

        def step(width: int):
            logits, hidden = self._forward(rows.tokens[:, :width], rows)
            self._advance(rows, logits, hidden, torch.zeros_like(rows.seqlens), horizon, commit)

        if not self._static_steps():
            # Eager: each row feeds only the slots [start, start + width) it needs: slots before
            # ``start`` hold K/V the previous forward computed for the same tokens (a draft pass
            # changes no position before its step), slots past what any row reads are cut (by
            # causality neither changes an output that is read).
            width = self._width
            index = (rows.start[:, None] + torch.arange(width, device=rows.start.device))
            tokens = rows.tokens.gather(1, index.clamp_(max=rows.tokens.shape[1] - 1).long())
            # On the CPU a matmul costs by its rows: rows of a batch run packed at their own
            # widths rather than all at the widest (the model's ``widths``).
            widths = self._needs if self.device.type == "cpu" and len(self._needs) > 1 else None
            logits, hidden = self._forward(tokens, rows, shift=rows.start, widths=widths)
            self._advance(rows, logits, hidden, torch.zeros_like(rows.seqlens), horizon, commit,
                          reuse_prefix=True)
            return
        step = functools.partial(step, rows.tokens.shape[1])  # a graph needs the static shape
        if not self._captures():
            return step()
        if self._graph is None:  # (re)captured whenever the set of running rows changes
            snapshot = {k: v.clone() for k, v in vars(rows).items() if isinstance(v, torch.Tensor)}
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                step()  # warm up (allocations, lazy init) outside the capture, then undo it
            torch.cuda.current_stream().wait_stream(side)
            for k, v in snapshot.items():
                getattr(rows, k).copy_(v)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                step()
            self._graph = graph
        self._graph.replay()

    def _advance(self, rows: _Rows, logits, hidden, start_slot, horizon: HorizonPolicy,
                 commit: CommitPolicy, reuse_prefix: bool = False) -> None:
        """Everything between two elastic forwards, as in-place device ops (no host sync).
        ``rows.restart`` marks rows whose new block begins at ``start_slot`` of this forward.
        The outputs start at slot ``rows.start`` of each row (0 unless the eager loop trimmed);
        ``reuse_prefix`` sets the next forward's ``rows.start``."""
        mask, bs = self.mask_token_id, rows.block.shape[1]
        stats = ops.token_entropy(logits)
        torch.sum(stats.logsumexp, dim=1, out=rows.lse_sum)
        pred, score = stats.argmax, commit.score(stats)
        width = pred.shape[1]
        position = torch.arange(bs, device=pred.device)[None, :]

        def at_slots(values, slots):
            """values [n, width] (this forward's outputs) at input slots [n, bs]. A slot outside
            the forward is clamped: its value is never read."""
            return values.gather(1, (slots - rows.start[:, None]).clamp_(0, width - 1))

        # 1. Verify: commit the accepted prefix plus the corrected token, or the whole block.
        # Positions before rows.start were predicted with final inputs by the draft passes.
        was_verifying = rows.verifying.clone()
        k_verified, passes_verified = rows.horizon.clone(), rows.passes.clone()
        verify_pred = torch.where(position < rows.start[:, None], rows.final_pred,
                                  at_slots(pred, position.expand(len(rows.seq), bs)))
        ops.verify_commit(rows.block, verify_pred, rows.horizon, rows.verifying,
                          rows.eos, rows.remask, rows.out, rows.out_len, rows.budget, rows.done,
                          rows.pending, rows.seqlens, rows.committed, rows.mismatch)
        rows.verified[:, 0] = torch.stack([was_verifying.to(torch.int32), k_verified,
                                           passes_verified, rows.committed, rows.mismatch], dim=1)
        live = ~rows.done
        accepted = was_verifying & (rows.mismatch < 0) & live
        rejected = was_verifying & (rows.mismatch >= 0) & live

        # 2. New blocks: K from the state at the pending token's slot (fused after a full accept).
        new = (rows.restart | accepted) & live
        slot = torch.where(accepted, rows.horizon, start_slot).long()
        # (On the CPU a tensor read costs nothing: skip the K-head in the many steps that start
        # no block. Elsewhere the step must not read the device.)
        if self.device.type != "cpu" or bool(new.any()):
            out = (slot - rows.start).clamp_(min=0)
            at = torch.arange(slot.numel(), device=slot.device)
            k = horizon.choose(hidden[at, out], stats.entropy[at, out], rows.min_block,
                               rows.block_size, self.khead)
            rows.horizon.copy_(torch.where(new, k, rows.horizon))
        rows.block.masked_fill_(new[:, None], mask)
        rows.step.masked_fill_(new, 0)
        rows.passes.masked_fill_(new, 0)
        rows.drafting |= new

        # 3. One draft pass for every drafting row; a row whose block filled up verifies next.
        slots = torch.where(new, slot, 0)[:, None] + position  # block position j -> input slot
        drafting = rows.drafting.clone()
        step_before = rows.step.clone()
        draft_pred = at_slots(pred, slots)
        # Positions 0..step saw only final tokens: their predictions are the verify's (causality).
        known = position <= step_before[:, None]
        final = drafting[:, None] & known & (slots >= rows.start[:, None])
        rows.final_pred.copy_(torch.where(final, draft_pred, rows.final_pred))
        rows.passes += drafting.to(torch.int32)
        ops.draft_commit(rows.block, rows.step, rows.drafting, draft_pred,
                         at_slots(score, slots), rows.horizon, rows.threshold, mask,
                         commit.score_is_entropy)
        filled = drafting & ~rows.drafting

        # 3b. Commit now, without a verify forward, where the passes already settled the outcome:
        #  * a filled block whose first mismatch they showed (a confident draft that a later pass's
        #    final prediction contradicts): the verify would only repeat it;
        #  * the last block: what a commit now would take (the agreeing known prefix, or up to the
        #    known mismatch and its correction) already reaches the budget or an EOS. The reference
        #    drafts on (so its trace of that block shows more passes), to the same tokens.
        wrong = rows.remask[:, None] & known & (rows.block != rows.final_pred)
        any_wrong = wrong.any(1)
        take = torch.where(any_wrong, wrong.int().argmax(1) + 1, step_before + 1)
        taken = position < take[:, None]
        tokens = torch.where(rows.remask[:, None], rows.final_pred, rows.block)
        eos = (tokens[:, :, None] == rows.eos[:, None, :]).any(2) & (tokens >= 0)
        last = drafting & ((take >= rows.budget - rows.out_len) | (eos & taken).any(1))
        early = (filled & any_wrong) | last
        rows.drafting &= ~early
        ops.verify_commit(rows.block, torch.where(known, rows.final_pred, rows.block),
                          rows.horizon, early.clone(), rows.eos, rows.remask, rows.out,
                          rows.out_len, rows.budget, rows.done, rows.pending, rows.seqlens,
                          rows.committed, rows.mismatch)
        rows.verified[:, 1] = torch.stack([early.to(torch.int32), rows.horizon, rows.passes,
                                           rows.committed, rows.mismatch], dim=1)
        rejected |= early & ~rows.done
        rows.verifying |= filled & ~early
        if reuse_prefix:
            # A draft pass wrote positions >= its step only: the K/V of slots 0..step (pending +
            # block[:step]) this forward computed stay exact for the next draft pass or verify.
            rows.start.copy_(torch.where(rows.drafting | rows.verifying, step_before + 1, 0))

        # 4. The next input. After a mismatch the corrected token is pending and the block restarts.
        rows.restart.copy_(rejected)
        rows.block.masked_fill_(rejected[:, None], mask)
        in_block = position < rows.horizon[:, None]
        rows.tokens[:, 0] = rows.pending
        rows.tokens[:, 1 : 1 + bs] = torch.where(in_block, rows.block, mask)
        rows.tokens[:, 1 + bs :] = mask

    # -- plain greedy AR ---------------------------------------------------------------------------
    def _run_ar(self, prompts, rows: _Rows, on_commit):
        """Greedy AR on the same runtime: the fair baseline. Each step commits one token through
        the same commit kernel (a one-token block, accepted as it is)."""
        dev = self.device
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=dev)
        t0 = time.perf_counter()
        tokens = torch.zeros((len(prompts), max(map(len, prompts))), dtype=torch.int64)
        for i, p in enumerate(prompts):
            tokens[i, : len(p)] = torch.tensor(p)
        slots = (lengths - 1).long()[:, None]
        logits, _ = self._forward(tokens.to(dev), rows, logits_slots=slots)
        rows.seqlens.copy_(lengths - 1)  # + 1 in the commit: the last prompt token's K/V is exact
        self._commit_ar(rows, logits)
        prefill_s = time.perf_counter() - t0
        batch_forwards = 1
        self._count_forward(rows)
        while self._collect(rows, on_commit):
            logits, _ = self._forward(rows.pending[:, None], rows)
            self._commit_ar(rows, logits)
            batch_forwards += 1
            self._count_forward(rows)
        return prefill_s, batch_forwards

    def _commit_ar(self, rows: _Rows, logits) -> None:
        stats = ops.token_entropy(logits[:, -1:])
        torch.sum(stats.logsumexp, dim=1, out=rows.lse_sum)
        pred = stats.argmax.contiguous()
        rows.verifying.fill_(True)
        ops.verify_commit(pred, pred, torch.ones_like(rows.horizon), rows.verifying, rows.eos,
                          rows.remask, rows.out, rows.out_len, rows.budget, rows.done, rows.pending,
                          rows.seqlens, rows.committed, rows.mismatch)

    # -- shared plumbing ---------------------------------------------------------------------------
    def _forward(self, tokens, rows: _Rows, logits_slots=None, shift=None, widths=None):
        """The model on ``tokens`` at each row's committed length (+ ``shift``)."""
        seqlens = rows.seqlens if shift is None else rows.seqlens + shift
        self.cache.seqlens.index_copy_(0, rows.cache_rows.long(), seqlens)
        return self.model(tokens, self.cache, rows=rows.cache_rows, logits_slots=logits_slots,
                          widths=widths)

    def _captures(self) -> bool:
        """Whether elastic steps are captured and replayed as CUDA graphs."""
        return self.cuda_graphs and self.device.type == "cuda"

    def _static_steps(self) -> bool:
        """Whether elastic steps run at the static width (a CUDA graph's) instead of trimmed."""
        return self._static_width or self._captures()

    def _count_forward(self, rows: _Rows) -> None:
        for s in rows.seq:
            self._forwards[s] += 1

    def _collect(self, rows: _Rows, on_commit) -> bool:
        """The step's one host sync: record block traces and new tokens, retire finished rows.
        Returns whether any row is still running."""
        # Only eager elastic steps trim their width; AR and graph steps skip that arithmetic.
        eager_elastic = self._cfgs[0].mode == "elastic" and not self._static_steps()
        need = self._slots_needed(rows) if eager_elastic else torch.ones_like(rows.out_len)
        info = torch.cat([rows.verified.flatten(1), rows.out_len[:, None],
                          rows.done[:, None].to(torch.int32),
                          need[:, None], rows.lse_sum.view(torch.int32)[:, None]], 1).tolist()
        if self._cancel is not None and self._cancel.is_set():
            raise _Cancelled
        keep, self._width, self._needs = [], 1, []
        for i, row in enumerate(info):
            n_out, done, need, lse_bits = row[10:]
            s = rows.seq[i]
            cfg = self._cfgs[s]
            if (lse_bits & _F32_EXPONENT) == _F32_EXPONENT:  # its float32 bits: inf or NaN
                cause = ("float16 overflowed? (try bfloat16 or float32)"
                         if self.model.dtype == torch.float16 else "broken weights or config?")
                raise FloatingPointError(f"prompt {s}: the model produced non-finite logits (NaN "
                                         f"or inf) after {n_out} new tokens: {cause}")
            for verified, k, passes, committed, mismatch in (row[0:5], row[5:10]):
                if verified and cfg.mode == "elastic":
                    self._traces[s].append({"K": k, "draft_passes": passes,
                                            "committed": committed,
                                            "mismatch": None if mismatch < 0 else mismatch})
            if on_commit is not None and n_out > rows.emitted[i]:
                on_commit(s, rows.out[i, rows.emitted[i] : n_out].tolist())
                rows.emitted[i] = n_out
            if done:
                tokens = rows.out[i, :n_out].tolist()
                eos = bool(tokens) and tokens[-1] in cfg.eos_token_ids
                self._results[s] = Generation(tokens, "eos" if eos else "length", 0)
            else:
                keep.append(i)
                self._width = max(self._width, need)
                self._needs.append(max(1, need))
        if len(keep) < len(rows.seq):
            rows.keep(keep)
            self._graph = None
        return bool(rows.seq)

    @staticmethod
    def _slots_needed(rows: _Rows) -> torch.Tensor:
        """Input slots each row's next forward feeds: up to K for a draft pass (outputs 0..K-1),
        K + bs for a verify (its outputs 0..K-1, then the fused next draft up to K + bs - 1), bs
        for a block that restarts (its K is not known yet); minus the reused prefix."""
        bs = rows.block.shape[1]
        need = torch.where(rows.verifying, rows.horizon + bs, rows.horizon)
        return torch.where(rows.restart, bs, need) - rows.start

    def _check(self, prompts, cfgs: list[DecodeConfig]) -> None:
        if not prompts:
            raise ValueError("prompts: expected at least one prompt")
        if len(cfgs) != len(prompts):
            raise ValueError(f"got {len(cfgs)} decode configs for {len(prompts)} prompts")
        if len({c.batch_key() for c in cfgs}) > 1:
            raise ValueError("prompts of one batch must agree on mode, horizon, commit and the "
                             "entropy bounds; decode the others in another batch")
        vocab = self.model.cfg.vocab_size
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
            bad = next((t for t in p if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab}) "
                                 f"(prompts[{i}])")
        cfg = cfgs[0]
        if cfg.mode == "elastic":
            if self.mask_token_id is None or not 0 <= self.mask_token_id < vocab:
                raise ValueError(f"elastic decoding needs a mask token id in [0, {vocab}), got "
                                 f"{self.mask_token_id} (set mask_token_id or use mode='ar')")
            if cfg.horizon == "khead" and self.khead is None:
                raise ValueError("horizon 'khead' needs a K-head (--head); use horizon 'entropy' "
                                 "or 'fixed' for a model without one")
        for c in cfgs:
            bad = next((t for t in c.eos_token_ids if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValueError(f"EOS token id {bad} is outside the vocabulary [0, {vocab})")

    def _positions(self, prompts, cfgs: list[DecodeConfig]) -> int:
        """Cache positions per row the batch needs: the longest prompt + max_new_tokens, plus in
        elastic mode the scratch of the longest forward (a row's verify writes up to 2 * block_size
        slots past its length, and in a batch of eager steps a row may feed from its reused prefix,
        < block_size slots in, as many slots as the widest row needs). ValueError past the cache
        capacity (``max_seq``) or the model's context."""
        tokens = max(len(p) + c.max_new_tokens for p, c in zip(prompts, cfgs))
        margin = 0 if cfgs[0].mode == "ar" else 3 * max(c.block_size for c in cfgs) + 1
        limit = self.max_seq or self.model.cfg.max_position_embeddings
        if tokens + margin > limit:
            scratch = f" + {margin} (3 * block_size + 1: elastic scratch)" if margin else ""
            raise ValueError(
                f"prompt + max_new_tokens = {tokens}{scratch} positions exceed the "
                f"{'cache capacity' if self.max_seq else 'model context'} of {limit}: shorten the "
                "prompt or lower max_new_tokens")
        return tokens + margin

    def _ensure_cache(self, batch: int, positions: int) -> None:
        """A cache for ``batch`` rows of ``positions`` (``_positions``), reused when big enough."""
        size = self.max_seq or positions
        c = self.cache
        if c is None or c.max_batch < batch or c.capacity < size:
            self.cache = None  # free the old one before allocating the new one
            self.cache = KVCache(self.model.cfg, batch, size, self.model.dtype, self.device)
