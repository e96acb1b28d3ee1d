"""Benchmark of the quantized matmuls (``quant_linear``) on one forward's worth of the embedded GGUF.

    python benchmarks/bench_quant.py [--threads 2] [--rows 1,2,4,5,8,9,17,33] [--isa avx2] [--json]

The weights are the embedded SmolLM2-135M-Instruct Q4_1 file's as fluid_rt loads them (Q4_1
layers, the Q8_0 tied embedding as lm_head: 96 MB), multiplied one after the other as a forward
does (fused q/k/v, o, fused gate/up, down with its silu(gate) * up input, per layer; then lm_head),
so the weight stream comes from memory as it does while decoding. Each row count M is one
forward's tokens: 1 for AR decoding, ~3..9 for an elastic block at batch 1, more for batches.

Reported per M: median milliseconds per forward's matmuls, the weight bytes per second that
implies, ``per_row_1`` = ms(M) / ms(1) (what a forward of M rows costs in one-row forwards: the
price of an elastic draft row), and ``ratio`` = torch / ours against torch's float32 matmul of the
same weights dequantized (``F.linear``, timed in the same run, alternating with ours). Both must
agree within the activation quantization's error before anything is timed. The last line is a
summary for scripts: ``summary quant path=<path> per_row_1=<rows>:<cost>,... ratios=<rows>:<ratio>,...``.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import cpu_path_label, emit_json, median_ms, print_table, use_checkout

use_checkout()
import fluid_rt  # noqa: E402
from fluid_rt.cpu_isa import set_cpu_isa  # noqa: E402
from fluid_rt.qlinear import QuantLinear  # noqa: E402


def forward_linears(model) -> list[tuple[QuantLinear, bool]]:
    """(linear, takes [gate, up]) of one forward, in order."""
    linears = []
    for layer in model.layers:
        linears += [(layer.qkv, False), (layer.o, False), (layer.gate_up, False), (layer.down, True)]
    linears.append((model.lm_head, False))
    if not all(isinstance(q, QuantLinear) for q, _ in linears):
        raise SystemExit("bench_quant: the embedded model did not load quantized")
    return linears


def dequantized(q: QuantLinear) -> torch.Tensor:
    return q.rows(torch.arange(q.out_features))


def run_quant(linears, xs):
    return [q.silu_and_mul(x) if silu else q(x) for (q, silu), x in zip(linears, xs)]


def run_torch(weights, silus, xs):
    out = []
    for w, silu, x in zip(weights, silus, xs):
        if silu:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        out.append(F.linear(x, w))
    return out


def check_agree(ours, ref):
    for a, b in zip(ours, ref):
        err, scale = (a - b).abs().max().item(), b.abs().max().item()
        if err > 0.05 * scale + 1e-3:  # int8 activations: ~1% typical, a few % at worst
            raise SystemExit(
                f"bench_quant: quantized and float results disagree ({err:.3g} vs scale {scale:.3g})"
            )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="1,2,4,5,8,9,17,33")
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--isa", choices=["portable", "avx2", "avx512"], default=None, help="our CPU path")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = ap.parse_args()
    if a.isa:
        set_cpu_isa(a.isa)
    torch.set_num_threads(a.threads)
    model = fluid_rt.load_model(adapter=None).model
    linears = forward_linears(model)
    weights = [dequantized(q) for q, _ in linears]
    silus = [silu for _, silu in linears]
    weight_bytes = sum(p.numel() for q, _ in linears for _, p, _ in q.parts)
    gen = torch.Generator().manual_seed(0)

    rows, base_ms = [], None
    for M in [int(m) for m in a.rows.split(",")]:
        xs = [torch.randn(M, w.shape[1] * (2 if s else 1), generator=gen) for w, s in zip(weights, silus)]
        check_agree(run_quant(linears, xs), run_torch(weights, silus, xs))
        ms_torch, ms_ours = [], []
        for _ in range(3):  # alternating rounds: load from other processes hits both sides alike
            ms_torch.append(median_ms(lambda: run_torch(weights, silus, xs), iters=a.iters))
            ms_ours.append(median_ms(lambda: run_quant(linears, xs), iters=a.iters))
        ours = min(ms_ours)
        base_ms = base_ms or ours
        rows.append(
            {
                "rows": M,
                "torch_f32_ms": min(ms_torch),
                "fluid_ms": ours,
                "fluid_GB_s": weight_bytes / ours / 1e6,
                "per_row_1": ours / base_ms,
                "ratio": min(ms_torch) / ours,
            }
        )
    path = cpu_path_label()
    title = (
        f"quant_linear (embedded Q4_1 + Q8_0 lm_head, {weight_bytes / 1e6:.0f} MB) vs torch float32 on "
        f"the dequantized weights, cpu path {path}, {a.threads} threads, best of 3 medians of {a.iters}"
    )
    if a.json:
        emit_json("quant", "cpu", rows, threads=a.threads, weight_mb=weight_bytes / 1e6, cpu_isa=path)
        return
    print_table(title, rows, ["rows", "torch_f32_ms", "fluid_ms", "fluid_GB_s", "per_row_1", "ratio"])
    per_row = ",".join(f"{r['rows']}:{r['per_row_1']:.2f}" for r in rows)
    ratios = ",".join(f"{r['rows']}:{r['ratio']:.2f}" for r in rows)
    print(f"summary quant path={path} per_row_1={per_row} ratios={ratios}")


if __name__ == "__main__":
    main()
