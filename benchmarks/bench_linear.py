"""Benchmark of packed_linear (weights packed once) against torch's matmul on the same weights.

    python benchmarks/bench_linear.py [--dtype float32|bfloat16] [--threads 2] [--rows 1,4,12]
                                      [--shapes decode8|smollm2] [--isa avx2] [--json]

CPU, float32 (default) or bfloat16, on the CPU path in use: ``--isa``, else ``FLUID_RT_CPU_ISA``,
else the best this CPU has (printed with the kernel: bfloat16 runs vdpbf16ps on the avx512 path
of an AVX512-BF16 CPU, otherwise the weights widened to float32 in registers). Torch keeps its own
ISA (MKL / oneDNN use AVX-512 and AVX512-BF16 where the CPU has them, whatever our path).
The weights are those of a whole forward (``--shapes``: ``decode8``, the decode benchmark's model,
8 layers, hidden 512, intermediate 1536, vocab 32000, 162 MB in float32; ``smollm2``,
SmolLM2-135M's 30 layers, hidden 576, intermediate 1536, vocab 49152), multiplied one after the
other as a forward does, so the weight stream comes from memory as it does while decoding. Each
row count M is one forward's tokens: 1 for AR decoding, ~4..33 for an elastic block, 128 a
prefill. Baseline: the faster of ``torch.mm(x, W[in, out])`` and ``F.linear(x, W[out, in])``,
timed in the same run, alternating with ours. Reported: median milliseconds per forward's worth
of matmuls, the weight bytes per second that implies, and baseline / ours (> 1 means
packed_linear is faster). Both must agree before anything is timed. The last line is a summary
for scripts: ``summary linear path=<path> dtype=<dtype> kernel=<kernel> ratios=<rows>:<ratio>,...``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import emit_json, median_ms, print_table, use_checkout

use_checkout()
import fluid_rt  # noqa: E402
from fluid_rt.cpu_isa import amx_enabled, set_cpu_isa  # noqa: E402
from fluid_rt.ops import pack_linear_weight, packed_linear  # noqa: E402

SHAPES = {  # (layers, hidden, heads, kv_heads, intermediate, vocab)
    "decode8": (8, 512, 8, 2, 1536, 32000),
    "smollm2": (30, 576, 9, 3, 1536, 49152),
}


def kernel_name(dtype) -> str:
    """What packed_linear runs for this dtype on the path in use."""
    if dtype == torch.float32:
        return "fp32 fma"
    if fluid_rt.cpu_isa() == "avx512" and fluid_rt.build_info()["cpu_features"]["amx_bf16"] and amx_enabled():
        return "bf16 AMX tiles"
    if fluid_rt.cpu_isa() == "avx512" and fluid_rt._C.cpu_has_avx512_bf16():
        return "bf16 vdpbf16ps"
    return "bf16 widened to fp32"


def model_shapes(layers, hidden, heads, kv_heads, intermediate, vocab):
    """(out, in) of every matmul of one forward, in order: fused qkv, o, fused gate/up, down; lm_head."""
    head_dim = hidden // heads
    layer = [
        (hidden + 2 * kv_heads * head_dim, hidden),
        (hidden, hidden),
        (2 * intermediate, hidden),
        (hidden, intermediate),
    ]
    return layer * layers + [(vocab, hidden)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,4,8,12,17,24,33")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--shapes", choices=sorted(SHAPES), default="decode8")
    ap.add_argument(
        "--isa",
        choices=["portable", "avx2", "avx512"],
        default=None,
        help="our CPU path (default: FLUID_RT_CPU_ISA, else the best one)",
    )
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = ap.parse_args()
    if a.isa:
        set_cpu_isa(a.isa)
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(0)
    shapes = model_shapes(*SHAPES[a.shapes])
    dtype = getattr(torch, a.dtype)
    weights = [(torch.randn(n, k, generator=gen) * k**-0.5).to(dtype) for n, k in shapes]
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
        ms_mm, ms_linear, ms_ours = [], [], []
        for _ in range(3):  # alternating rounds: load from other processes hits both sides alike
            ms_mm.append(median_ms(lambda: [torch.mm(x, w) for x, w in zip(xs, w_in_out)], iters=a.iters))
            ms_linear.append(
                median_ms(lambda: [F.linear(x, w.t()) for x, w in zip(xs, w_in_out)], iters=a.iters)
            )
            ms_ours.append(
                median_ms(lambda: [packed_linear(x, p) for x, p in zip(xs, packed)], iters=a.iters)
            )
        base, ms_ours = min(min(ms_mm), min(ms_linear)), min(ms_ours)
        rows.append(
            {
                "rows": M,
                "torch_ms": base,
                "fluid_ms": ms_ours,
                "fluid_GB_s": weight_bytes / ms_ours / 1e6,
                "ratio": base / ms_ours,
            }
        )
    path, kernel = fluid_rt.cpu_isa(), kernel_name(dtype)
    title = (
        f"packed_linear vs torch matmul, cpu path {path} ({kernel}), {a.dtype}, {a.threads} threads, "
        f"one {a.shapes} forward's matmuls ({weight_bytes / 1e6:.0f} MB of weights), "
        f"best of 3 medians of {a.iters}"
    )
    if a.json:
        emit_json(
            "linear",
            "cpu",
            rows,
            dtype=a.dtype,
            threads=a.threads,
            weight_mb=weight_bytes / 1e6,
            cpu_isa=path,
            kernel=kernel,
            shapes=a.shapes,
        )
        return
    print_table(title, rows, ["rows", "torch_ms", "fluid_ms", "fluid_GB_s", "ratio"])
    ratios = ",".join(f"{r['rows']}:{r['ratio']:.2f}" for r in rows)
    print(f"summary linear path={path} dtype={a.dtype} kernel={kernel.replace(' ', '_')} ratios={ratios}")


if __name__ == "__main__":
    main()
