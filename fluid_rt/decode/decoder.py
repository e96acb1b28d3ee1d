"""``Decoder``: elastic-horizon (FLUID) decoding and greedy AR decoding on one static KV cache.

Every elastic forward has the layout (and, captured in a CUDA graph, the shape)
``[B, 1 + 2 * block_size]``:

    slot 0          the pending token: the last committed one, whose K/V is (re)computed here
    slots 1..bs     the block being drafted or verified (MASK beyond its horizon K)
    slots bs+1..2bs MASK

so the cache always holds the committed tokens but the last, and the output at slot j predicts
block position j (slot 0's output is the spec's ``next_logits``). The loop: prefill fused with the
first draft pass, then one step per forward (``StepRunner``), each followed by the phases of
``fluid_rt.decode.phases`` on the device and one host read (``batch.collect``).

With ``remask`` every committed token is the greedy argmax given all tokens before it, so the
output equals greedy AR decoding (``mode="ar"``) of the same model.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from fluid_rt.cache import KVCache
from fluid_rt.decode import phases
from fluid_rt.decode.batch import Batch, Generation, OnCommit, collect, read_host
from fluid_rt.decode.config import DecodeConfig
from fluid_rt.decode.runner import StepRunner, device_scope


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


class _Cancelled(Exception):
    """Raised inside a decode whose ``stream`` was closed early: unwinds it at a step boundary."""


def _prompt_tensor(prompts, width: int, fill: int, device: torch.device) -> torch.Tensor:
    """The prompts as one ``[len(prompts), width]`` int64 tensor, right-padded with ``fill``."""
    tokens = torch.full((len(prompts), width), fill, dtype=torch.int64)
    for i, p in enumerate(prompts):
        tokens[i, : len(p)] = torch.tensor(p)
    return tokens.to(device)


def _check_token_ids(prompts, cfgs: list[DecodeConfig], vocab: int) -> None:
    """ValueError for an empty prompt, or a prompt / EOS token id outside ``[0, vocab)``."""
    for i, p in enumerate(prompts):
        if not p:
            raise ValueError(f"prompts[{i}] is empty: a prompt needs at least one token")
        if (bad := next((t for t in p if not 0 <= t < vocab), None)) is not None:
            raise ValueError(f"prompt token id {bad} is outside the vocabulary [0, {vocab}) (prompts[{i}])")
    for c in cfgs:
        if (bad := next((t for t in c.eos_token_ids if not 0 <= t < vocab), None)) is not None:
            raise ValueError(f"EOS token id {bad} is outside the vocabulary [0, {vocab})")


class Decoder:
    """Decodes batches of prompts with a model on a static KV cache sized for the requests.

    ``model``: ``fluid_rt.model.Transformer``; ``khead``: ``fluid_rt.khead.KHead`` (needed for
    ``horizon="khead"``); ``mask_token_id``: the FLUID mask token (needed for elastic decoding);
    ``max_seq``: a fixed cache capacity (default: sized per call, up to the model's context);
    ``cuda_graphs``: replay each step as one CUDA graph on a CUDA device; ``steps``: force how
    steps run (``StepRunner``: ``eager``, ``static`` or ``graph``; the tests run the graph's
    static-width step logic on the CPU with it).
    """

    def __init__(
        self,
        model,
        *,
        khead=None,
        mask_token_id: int | None = None,
        max_seq: int | None = None,
        cuda_graphs: bool = True,
        steps: str | None = None,
    ) -> None:
        if steps not in (None, "eager", "static", "graph"):
            raise ValueError(f"steps: expected eager, static, graph or None, got {steps!r}")
        self.model = model
        self.khead = khead
        self.mask_token_id = mask_token_id
        self.max_seq = max_seq
        self.cuda_graphs = cuda_graphs
        self.steps = steps
        self.cache: KVCache | None = None
        # One decode at a time: every call reuses this decoder's cache (``generate`` refuses to
        # start while another call, e.g. an unfinished ``stream``, runs).
        self._busy = threading.Lock()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def step_mode(self) -> str:
        """How steps run (``StepRunner``): ``graph``, ``static`` or ``eager``."""
        if self.steps is not None:
            return self.steps
        return "graph" if self.cuda_graphs and self.device.type == "cuda" else "eager"

    # -- public API ------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        cfg: DecodeConfig | Sequence[DecodeConfig] | None = None,
        on_commit: OnCommit | None = None,
    ) -> tuple[list[Generation], BatchStats]:
        """Decode every prompt (a list of token ids) in one batch, with one ``DecodeConfig`` for
        all or one per prompt (default: ``DecodeConfig()``). Each row has its own K, step and stop; its tokens and trace equal
        those of its batch-of-one run. ``on_commit(i, ids)`` streams prompt i's new tokens.
        Returns one ``Generation`` per prompt, in order, and the batch's ``BatchStats``."""
        self._claim()
        try:
            return self._generate(prompts, cfg, on_commit)
        finally:
            self._busy.release()

    def resolve(self, cfg: DecodeConfig) -> DecodeConfig:
        """``cfg`` with ``mode`` and ``horizon`` picked for this decoder where they are None:
        elastic and the K-head when it has a K-head, else AR (and the entropy horizon)."""
        return cfg.resolved(self.khead is not None)

    def check(
        self, prompts: Sequence[Sequence[int]], cfg: DecodeConfig | Sequence[DecodeConfig] | None = None
    ) -> None:
        """Raise the ValueError ``generate`` would raise for these requests (empty prompts, token
        ids outside the vocabulary, no mask token or K-head where the policy needs one, more
        positions than the cache can hold), without decoding anything."""
        self._positions(*self._requests(prompts, cfg))

    def stream(
        self, prompt: Sequence[int], cfg: DecodeConfig | None = None, tokenizer=None
    ) -> Iterator[str | list[int]]:
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
                    [prompt], cfg, lambda _i, ids: chunks.put(ids), cancel
                )
            except _Cancelled:
                pass
            except BaseException as err:  # noqa: BLE001  (re-raised in the caller's thread)
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
                if piece := (text.push(ids) if text is not None else ids):
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

    # -- one call ----------------------------------------------------------------------------------
    def _claim(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError(
                "this Decoder is already decoding (a generate() in another thread, "
                "or a stream() not yet exhausted or closed): it has one KV cache; "
                "finish or close that call first, or use a second Decoder"
            )

    def _generate(self, prompts, cfg, on_commit, cancel: threading.Event | None = None):
        prompts, cfgs = self._requests(prompts, cfg)
        positions = self._positions(prompts, cfgs)
        with device_scope(self.device):  # also in stream()'s worker thread
            # The cache outlives the call: made outside inference mode, it stays an ordinary tensor.
            self._ensure_cache(len(prompts), positions)
            # inference_mode (thread-local, so entered here): no version counters or view tracking
            # on the step's ~100 small tensor ops (measured: a 64-token decode 4-6% faster on the
            # CPU, AR and elastic). on_commit runs inside it.
            with torch.inference_mode():
                return self._decode(prompts, cfgs, on_commit, cancel)

    def _decode(self, prompts, cfgs, on_commit, cancel):
        """Prefill and steps to the end of every row, on ``self.cache``."""
        self.cache.reset()
        mask = self.mask_token_id if self.mask_token_id is not None else 0
        b = Batch(cfgs, mask, self.device, self.khead)
        runner = StepRunner(self.model, self.cache, self.step_mode)
        start = time.perf_counter()
        prefill = self._prefill_elastic if b.mode == "elastic" else self._prefill_ar
        prefill(runner, b, prompts)
        prefill_s = time.perf_counter() - start
        step = runner.elastic_step if b.mode == "elastic" else runner.ar_step
        forwards = 1
        while self._collect(runner, b, on_commit, cancel):
            step(b)
            b.count_forward()
            forwards += 1
        wall = time.perf_counter() - start
        return b.results, BatchStats(forwards, sum(len(g.tokens) for g in b.results), wall, prefill_s)

    def _prefill_elastic(self, runner: StepRunner, b: Batch, prompts) -> None:
        """Prefill fused with the first draft pass: ``[prompt, MASK * bs]``, right-padded with
        MASK. Logits only from each row's last prompt token on (its slot 0 from here): the vocab
        matmul of the rest of the prompt would be thrown away."""
        bs = b.block.shape[1]
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=self.device)
        tokens = _prompt_tensor(prompts, max(map(len, prompts)) + bs, b.mask_id, self.device)
        b.pending.copy_(tokens.gather(1, (lengths - 1).long()[:, None]).squeeze(1))
        b.restart.fill_(True)
        frame = (lengths - 1).long()[:, None] + torch.arange(bs, device=self.device)
        logits, hidden = runner.forward(b, tokens, logits_slots=frame)  # at positions 0..
        hidden = hidden.gather(1, frame[:, :, None].expand(-1, -1, hidden.shape[-1]))
        b.seqlens.copy_(lengths - 1)  # the cache holds the prompt but its last (pending) token
        phases.advance(b, logits, hidden, reuse_prefix=False, fused=runner.fuses(b))
        b.count_forward()

    def _prefill_ar(self, runner: StepRunner, b: Batch, prompts) -> None:
        lengths = torch.tensor([len(p) for p in prompts], dtype=torch.int32, device=self.device)
        tokens = _prompt_tensor(prompts, max(map(len, prompts)), 0, self.device)
        logits, _ = runner.forward(b, tokens, logits_slots=(lengths - 1).long()[:, None])
        b.seqlens.copy_(lengths - 1)  # + 1 in the commit: the last prompt token's K/V is exact
        phases.commit_ar(b, logits, fused=runner.fuses(b))
        b.count_forward()

    def _collect(self, runner: StepRunner, b: Batch, on_commit, cancel) -> bool:
        """The step's one host sync (``batch.read_host``): traces, streamed tokens, finished rows.
        Returns whether any row still runs."""
        host = read_host(b, trim=runner.trims and b.mode == "elastic", packed=runner.fuses(b))
        if cancel is not None and cancel.is_set():
            raise _Cancelled
        running = collect(b, host, on_commit, self.model.dtype)
        runner.compact(b, running)
        return bool(running)

    # -- request checks --------------------------------------------------------------------------
    def _requests(self, prompts, cfg) -> tuple[list[list[int]], list[DecodeConfig]]:
        prompts = [[int(t) for t in p] for p in prompts]
        cfg = DecodeConfig() if cfg is None else cfg
        cfgs = [cfg] * len(prompts) if isinstance(cfg, DecodeConfig) else list(cfg)
        if not prompts:
            raise ValueError("prompts: expected at least one prompt")
        if len(cfgs) != len(prompts):
            raise ValueError(f"got {len(cfgs)} decode configs for {len(prompts)} prompts")
        cfgs = [self.resolve(c) for c in cfgs]
        if len({c.batch_key() for c in cfgs}) > 1:
            raise ValueError(
                "prompts of one batch must agree on mode, horizon, commit and the "
                "entropy bounds; decode the others in another batch"
            )
        _check_token_ids(prompts, cfgs, self.model.cfg.vocab_size)
        self._check_elastic(cfgs[0])
        return prompts, cfgs

    def _check_elastic(self, cfg: DecodeConfig) -> None:
        vocab = self.model.cfg.vocab_size
        if cfg.mode != "elastic":
            return
        if self.mask_token_id is None or not 0 <= self.mask_token_id < vocab:
            raise ValueError(
                f"elastic decoding needs a mask token id in [0, {vocab}), got "
                f"{self.mask_token_id} (set mask_token_id or use mode='ar')"
            )
        if cfg.horizon == "khead" and self.khead is None:
            raise ValueError(
                "horizon 'khead' needs a K-head (--head); use horizon 'entropy' "
                "or 'fixed' for a model without one"
            )

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
                "prompt or lower max_new_tokens"
            )
        return tokens + margin

    def _ensure_cache(self, batch: int, positions: int) -> None:
        """A cache for ``batch`` rows of ``positions`` (``_positions``), reused when big enough."""
        size = self.max_seq or positions
        c = self.cache
        if c is None or c.max_batch < batch or c.capacity < size:
            self.cache = None  # free the old one before allocating the new one
            self.cache = KVCache(self.model.cfg, batch, size, self.model.dtype, self.device)
