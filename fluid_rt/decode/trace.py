"""Block trace records: what each block of a row did (docs/spec/decoding.md's trace).

On the device a step writes up to two records per row (``StepTraces``: a verify, then a draft pass
that settled the next block at once); the host reads them in the step's
one sync (``Batch.read_host``) and turns each into a ``BlockRecord``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

# A step settles at most two blocks of a row: the one its verify committed, and the next one, when
# the fused first draft pass of that block already settles it.
RECORDS_PER_STEP = 2


class BlockRecord(NamedTuple):
    """One block: its horizon K, the draft passes it took, the tokens it committed (before any
    EOS/budget cut: the last block may count past the output) and its first mismatch (None when
    the verify accepted the whole block)."""

    K: int
    draft_passes: int
    committed: int
    mismatch: int | None

    def as_dict(self) -> dict:
        return self._asdict()


class StepTraces:
    """The records one step wrote, field by field: ``data[b, f, i]`` is field ``FIELDS[f]`` of
    record i of row b (int32; one tensor, so that a record is written and read in one op);
    ``settled`` says whether the record holds a block."""

    FIELDS = ("settled", "K", "draft_passes", "committed", "mismatch")

    def __init__(self, rows: int, device) -> None:
        self.data = torch.zeros((rows, len(self.FIELDS), RECORDS_PER_STEP), dtype=torch.int32, device=device)

    def record(self, i: int, settled, k, draft_passes, committed, mismatch) -> None:
        """Record i of every row, from ``[rows]`` tensors (device ops only)."""
        fields = (settled, k, draft_passes, committed, mismatch)
        self.data[:, :, i] = torch.stack([f.to(torch.int32) for f in fields], dim=1)

    def field(self, name: str) -> torch.Tensor:
        """``[rows, RECORDS_PER_STEP]``: one field of every record."""
        return self.data[:, self.FIELDS.index(name)]

    @classmethod
    def records(cls, values: list[int]) -> list[BlockRecord]:
        """The blocks in one row's host copy of ``data`` (flattened: field-major)."""
        n = RECORDS_PER_STEP
        by_field = {name: values[j * n : (j + 1) * n] for j, name in enumerate(cls.FIELDS)}
        return [
            BlockRecord(
                by_field["K"][i],
                by_field["draft_passes"][i],
                by_field["committed"][i],
                None if by_field["mismatch"][i] < 0 else by_field["mismatch"][i],
            )
            for i in range(n)
            if by_field["settled"][i]
        ]
