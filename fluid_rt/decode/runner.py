"""``StepRunner``: how the forwards of one call run, in one of three ways.

* ``eager`` (the CPU, or ``cuda_graphs=False``): each row feeds only the input slots it reads
  (``Batch.needs``, from its reused prefix ``Batch.start`` on), packed at its own width on the
  CPU; finished rows are dropped after every step.
* ``static``: every forward at the static width ``[rows, 1 + 2 * block_size]``, as a graph needs,
  uncaptured (the tests run the graph's step logic this way on the CPU).
* ``graph``: the static step captured once per batch shape as a CUDA graph and replayed. Finished
  rows stay in the batch, masked (every flag off, so a step leaves them as they are), until half
  the rows have finished: only then is the batch compacted and the smaller shape captured.

All CUDA work runs under the model's device (``device_scope``), on a capture stream of that device
(``capture_graph``): with the model on ``cuda:N``, work on the current device would record nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from fluid_rt.decode import phases
from fluid_rt.decode.batch import Batch


def device_scope(device: torch.device, cuda=torch.cuda):
    """The context that makes ``device`` current for CUDA work (a no-op off CUDA). Each thread
    has its own current device, so ``Decoder.stream``'s worker enters it too."""
    return cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def capture_graph(step: Callable[[], None], device: torch.device, undo: Callable[[], None], cuda=torch.cuda):
    """``step`` captured as a CUDA graph on ``device``: run once on a side stream of that device
    (allocations, lazy initialization), ``undo`` its effects, then captured on the same stream."""
    with cuda.device(device):
        stream = cuda.Stream(device=device)
        stream.wait_stream(cuda.current_stream(device))
        with cuda.stream(stream):
            step()
        cuda.current_stream(device).wait_stream(stream)
        undo()
        graph = cuda.CUDAGraph()
        with cuda.graph(graph, stream=stream):
            step()
    return graph


def replay_graph(graph, device: torch.device, cuda=torch.cuda) -> None:
    with cuda.device(device):
        graph.replay()


class StepRunner:
    """Runs the forwards of one ``Decoder`` call on its model and cache (``mode``: ``eager``,
    ``static`` or ``graph``, see the module docstring)."""

    def __init__(self, model, cache, mode: str, cuda=torch.cuda) -> None:
        self.model, self.cache, self.mode, self._cuda = model, cache, mode, cuda
        self._graph = None  # the captured step of the current batch shape

    @property
    def trims(self) -> bool:
        """Whether the next forward's widths are read back in the step's host sync."""
        return self.mode == "eager"

    def fuses(self, b: Batch) -> bool:
        """Whether the phases between two forwards run as one op (``phases.can_fuse``): eager
        steps on the CPU, where their small tensor ops would each start cold after a forward. The
        op also packs the step's host read (``batch.read_host(packed=True)``)."""
        return self.mode == "eager" and phases.can_fuse(b, self.model.device)

    def forward(self, b: Batch, tokens, logits_slots=None, shift=None, widths=None):
        """The model on ``tokens`` at each row's committed length (+ ``shift``). Logits stay in
        the model's dtype: ``token_entropy`` reads them as they are."""
        seqlens = b.seqlens if shift is None else b.seqlens + shift
        self.cache.seqlens.index_copy_(0, b.cache_rows.long(), seqlens)
        return self.model(
            tokens,
            self.cache,
            rows=b.cache_rows,
            logits_slots=logits_slots,
            widths=widths,
            float_logits=False,
        )

    def elastic_step(self, b: Batch) -> None:
        """One steady-state step: forward ``[pending, block, MASK]`` and advance every row."""
        if self.mode != "eager":
            return self._run_static(
                b, lambda: phases.advance(b, *self.forward(b, b.tokens), reuse_prefix=False)
            )
        # Each row feeds only the slots [start, start + width) it needs: slots before ``start``
        # hold K/V the previous forward computed for the same tokens (a draft pass changes no
        # position before its step), slots past what any row reads are cut (by causality
        # neither changes an output that is read).
        width = max(b.needs)
        index = b.start[:, None] + torch.arange(width, device=b.start.device)
        tokens = b.tokens.gather(1, index.clamp_(max=b.tokens.shape[1] - 1).long())
        # On the CPU a matmul costs by its rows: rows of a batch run packed at their own widths
        # rather than all at the widest (the model's ``widths``).
        widths = b.needs if self.model.device.type == "cpu" and b.rows > 1 else None
        logits, hidden = self.forward(b, tokens, shift=b.start, widths=widths)
        phases.advance(b, logits, hidden, reuse_prefix=True, fused=self.fuses(b))

    def ar_step(self, b: Batch) -> None:
        """One greedy AR step: forward the pending tokens, commit each row's argmax."""

        def step():
            return phases.commit_ar(b, self.forward(b, b.pending[:, None])[0], fused=self.fuses(b))

        if self.mode == "eager":
            return step()
        self._run_static(b, step)

    def _run_static(self, b: Batch, step: Callable[[], None]) -> None:
        if self.mode == "static":
            return step()
        if self._graph is None:
            state = b.snapshot()
            self._graph = capture_graph(step, self.model.device, lambda: b.restore(state), self._cuda)
        replay_graph(self._graph, self.model.device, self._cuda)

    def compact(self, b: Batch, running: list[int]) -> None:
        """Drop finished rows: eagerly after every step that finished one; at the static shape
        (which a new capture follows) only once half the rows have finished."""
        if len(running) == b.rows:
            return
        if self.mode == "eager" or 2 * len(running) <= b.rows:
            b.keep(running)
            self._graph = None
