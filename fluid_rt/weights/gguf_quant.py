"""GGUF quantized tensors kept quantized: ``QuantWeight`` (the file's blocks, rows in HF order) and
the decoding of its blocks into integer quants + float scales for ``fluid_rt.ops.quant_pack``.

Supported: Q8_0, Q4_0, Q4_1 (blocks of 32), Q4_K and Q6_K (super-blocks of 256 with sub-block
scales). Each decodes losslessly into one kernel format (``fluid_rt.ops.FORMATS``):

=======  ==========  ==========================================================================
type     format      value
=======  ==========  ==========================================================================
Q4_0     u4f16       d * q + m, q in 0..15, m = -8 d (u4f32 if -8 d overflows a float16)
Q4_1     u4f16       d * q + m
Q4_K     u4f32       (d * sc_j) * q - (dmin * mn_j) per sub-block j of 32 (products exact in float32)
Q8_0     s8f16       d * q, q int8
Q6_K     s8f32x2     (d * sc_j) * (q6 - 32) per sub-block j of 16
=======  ==========  ==========================================================================

The byte layouts follow ggml's block structs (``block_q4_K``, ``block_q6_K``, ...);
``tests/test_quant.py`` checks every decoder against ``gguf.quants.dequantize``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["QUANT_TYPES", "QuantWeight", "decode_blocks"]

# type name -> (values per block, bytes per block)
QUANT_TYPES = {"Q8_0": (32, 34), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q6_K": (256, 210)}


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    """The float16 at byte ``start`` of every block, as float32 [nblocks, 1]."""
    return blocks[:, start : start + 2].copy().view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[nblocks, 16] bytes -> [nblocks, 32] values: low nibbles first, then high (ggml's Q4_0/Q4_1)."""
    return np.concatenate([qs & 0xF, qs >> 4], axis=1)


def _decode_q8_0(b):
    return b[:, 2:].view(np.int8), _f16(b, 0), None


def _decode_q4_0(b):
    d = _f16(b, 0)
    return _nibbles(b[:, 2:18]), d, -8.0 * d


def _decode_q4_1(b):
    return _nibbles(b[:, 4:20]), _f16(b, 0), _f16(b, 2)


def _q4_k_scales(s: np.ndarray):
    """ggml's get_scale_min_k4: 12 bytes -> 8 six-bit scales and 8 six-bit mins."""
    s = s.astype(np.uint8)
    sc = np.empty((s.shape[0], 8), np.uint8)
    mn = np.empty_like(sc)
    sc[:, :4], mn[:, :4] = s[:, 0:4] & 63, s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 0xF) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return sc.astype(np.float32), mn.astype(np.float32)


def _decode_q4_k(b):
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _q4_k_scales(b[:, 4:16])
    qs = b[:, 16:144].reshape(-1, 4, 32)  # chunk c of 64 values: low nibbles, then high
    q = np.stack([qs & 0xF, qs >> 4], axis=2).reshape(-1, 256)
    return q, d * sc, -(dmin * mn)


def _decode_q6_k(b):
    ql, qh = b[:, 0:128].reshape(-1, 2, 64), b[:, 128:192].reshape(-1, 2, 32)
    sc = b[:, 192:208].view(np.int8).astype(np.float32)
    d = _f16(b, 208)
    lo, hi = ql[:, :, :32], ql[:, :, 32:]
    parts = [
        (lo & 0xF) | ((qh & 3) << 4),
        (hi & 0xF) | (((qh >> 2) & 3) << 4),
        (lo >> 4) | (((qh >> 4) & 3) << 4),
        (hi >> 4) | (((qh >> 6) & 3) << 4),
    ]
    q = np.stack(parts, axis=2).reshape(-1, 256).astype(np.int16) - 32  # per half of 128: 4 x 32
    return q.astype(np.int8), d * sc, None


_DECODERS = {
    "Q8_0": _decode_q8_0,
    "Q4_0": _decode_q4_0,
    "Q4_1": _decode_q4_1,
    "Q4_K": _decode_q4_k,
    "Q6_K": _decode_q6_k,
}
_FORMAT = {"Q8_0": "s8f16", "Q4_0": "u4f16", "Q4_1": "u4f16", "Q4_K": "u4f32", "Q6_K": "s8f32x2"}


def decode_blocks(qtype: str, raw: np.ndarray, cols: int):
    """Rows of GGUF blocks -> ``(format name, q [N, cols], d [N, *], m [N, cols / 32] or None)``
    as torch tensors for ``ops.quant_pack``: q uint8 (u4) or int8 (s8), d and m float32."""
    if qtype not in _DECODERS:
        raise ValueError(f"quantization type {qtype} has no kernel (supported: {', '.join(QUANT_TYPES)})")
    n = raw.shape[0]
    q, d, m = _DECODERS[qtype](np.ascontiguousarray(raw).reshape(-1, QUANT_TYPES[qtype][1]))
    q = torch.from_numpy(np.ascontiguousarray(q).reshape(n, cols))
    d = torch.from_numpy(np.ascontiguousarray(d, dtype=np.float32).reshape(n, -1))
    if m is not None:  # Q4_K's mins come per sub-block of 32 already; expand nothing else
        m = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32).reshape(n, cols // 32))
    return _FORMAT[qtype], q, d, m


@dataclass
class QuantWeight:
    """A ``[rows, cols]`` weight kept as the file's quantized blocks: ``segments`` of
    ``(type name, uint8 [n_i, cols / block * block_bytes])``, stacked by rows (fused q/k/v or
    gate/up may mix types). CPU only; ``dequantize()`` gives the float32 values."""

    segments: list = field(default_factory=list)
    cols: int = 0
    device = torch.device("cpu")

    @property
    def shape(self) -> torch.Size:
        return torch.Size((sum(s[1].shape[0] for s in self.segments), self.cols))

    @staticmethod
    def from_gguf(qtype: str, data: np.ndarray, shape) -> QuantWeight:
        rows, cols = int(shape[0]), int(shape[1])
        per, nbytes = QUANT_TYPES[qtype]
        if cols % per:
            raise ValueError(f"{qtype} tensor with {cols} columns: not a whole number of {per}-blocks")
        raw = np.asarray(data, dtype=np.uint8).reshape(rows, cols // per * nbytes)
        return QuantWeight([(qtype, raw)], cols)

    def permute_rows(self, perm: torch.Tensor) -> QuantWeight:
        ((qtype, raw),) = self.segments
        return QuantWeight([(qtype, raw[perm.numpy()])], self.cols)

    @staticmethod
    def cat(parts: list) -> QuantWeight:
        if len({p.cols for p in parts}) != 1:
            raise ValueError(f"cannot stack quantized weights of widths {[p.cols for p in parts]}")
        segments = []
        for qtype, raw in (s for p in parts for s in p.segments):
            if segments and segments[-1][0] == qtype:  # one kernel call for same-type neighbours
                segments[-1] = (qtype, np.concatenate([segments[-1][1], raw]))
            else:
                segments.append((qtype, raw))
        return QuantWeight(segments, parts[0].cols)

    def dequantize(self) -> torch.Tensor:
        """float32 ``[rows, cols]`` via ``gguf.quants.dequantize``."""
        import gguf
        from gguf.quants import dequantize

        parts = [
            dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(raw.shape[0], self.cols)
            for qtype, raw in self.segments
        ]
        return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts), dtype=np.float32))
