"""Benchmark of packed_linear (weights packed once) against torch's matmul on the same weights.

    python benchmarks/bench_linear.py [--dtype float32|bfloat16] [--threads 2] [--rows 1,4,12] [--json]

CPU, float32 (default) or bfloat16 (packed_linear's AVX512-BF16 kernel against oneDNN, which
uses AMX for bfloat16 where it can). The weights are those of a whole forward of the decode benchmark's model (8 layers,
hidden 512, intermediate 1536, vocab 32000: 162 MB in float32, more than the caches), multiplied one after the
other as a forward does, so the weight stream comes from memory as it does while decoding. Each
row count M is one forward's tokens: 1 for AR decoding, ~4..33 for an elastic block. Baseline: the
faster of ``torch.mm(x, W[in, out])`` and ``F.linear(x, W[out, in])`` (MKL/oneDNN sgemm), timed in
the same run. Reported: median milliseconds per forward's worth of matmuls, the weight bytes per
second that implies, and baseline / ours (> 1 means packed_linear is faster). Both must agree
before anything is timed.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import emit_json, median_ms, print_table, use_checkout

use_checkout()
from fluid_rt.ops import pack_linear_weight, packed_linear  # noqa: E402


def model_shapes(layers, hidden, heads, kv_heads, intermediate, vocab):
    """(out, in) of every matmul of one forward, in order: fused qkv, o, fused gate/up, down; lm_head."""
    head_dim = hidden // heads
    layer = [(hidden + 2 * kv_heads * head_dim, hidden), (hidden, hidden),
             (2 * intermediate, hidden), (hidden, intermediate)]
    return layer * layers + [(vocab, hidden)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,4,8,12,17,24,33")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1536)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = model_shapes(a.layers, a.hidden, 8, 2, a.intermediate, a.vocab)
    dtype = getattr(torch, a.dtype)
    weights = [(torch.randn(n, k, generator=gen) * k ** -0.5).to(dtype) for n, k in shapes]
    packed = [pack_linear_weight(w) for w in weights]
    w_in_out = [w.t().contiguous() for w in weights]
    del weights  # each implementation keeps only its own copy, as the model would
    weight_bytes = sum(n * k for n, k in shapes) * torch.finfo(dtype).bits // 8

    rows = []
    for M in [int(m) for m in a.rows.split(",")]:
        xs = [torch.randn(M, k, generator=gen).to(dtype) for _, k in shapes]
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        for x, p, w in zip(xs, packed, w_in_out):
            torch.testing.assert_close(packed_linear(x, p), x @ w, rtol=tol, atol=tol)
        ms_mm = median_ms(lambda: [torch.mm(x, w) for x, w in zip(xs, w_in_out)], iters=a.iters)
        ms_linear = median_ms(lambda: [F.linear(x, w.t()) for x, w in zip(xs, w_in_out)],
                              iters=a.iters)
        ms_ours = median_ms(lambda: [packed_linear(x, p) for x, p in zip(xs, packed)], iters=a.iters)
        base = min(ms_mm, ms_linear)
        rows.append({"rows": M, "torch_ms": base, "fluid_ms": ms_ours,
                     "fluid_GB_s": weight_bytes / ms_ours / 1e6, "ratio": base / ms_ours})
    title = (f"packed_linear vs torch matmul, cpu {a.dtype}, {a.threads} threads, one forward's "
             f"matmuls ({weight_bytes / 1e6:.0f} MB of weights), median of {a.iters}")
    if a.json:
        emit_json("linear", "cpu", rows, dtype=a.dtype, threads=a.threads, weight_mb=weight_bytes / 1e6)
    else:
        print_table(title, rows, ["rows", "torch_ms", "fluid_ms", "fluid_GB_s", "ratio"])


if __name__ == "__main__":
    main()
