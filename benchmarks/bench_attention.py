"""Benchmark fluid_rt causal_attention against torch's scaled_dot_product_attention.

Cases (GQA 32/8, D=128, batch 1):
  decode : a block of 17 queries over 2048 cached tokens (k/v of the block written by our op);
           baseline SDPA with the bottom-right aligned boolean mask and enable_gqa=True over views of
           the same cache.
  prefill: 512 queries over an empty cache (k/v written by our op); baseline SDPA is_causal=True.

Prints a table (median ms of many runs, baseline and ours measured in the same run) or --json.
Usage: python benchmarks/bench_attention.py [--device cpu|cuda] [--threads 2] [--dtype float32 bfloat16] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from common import use_checkout  # noqa: E402

use_checkout()
import fluid_rt  # noqa: E402


def time_once(fn, device):
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def median_ms_pair(baseline, ours, device, warmup, iters):
    """Medians of baseline and ours, timed alternately so both see the same machine state."""
    for _ in range(warmup):
        baseline()
        ours()
    if device == "cuda":
        torch.cuda.synchronize()
    base_t, ours_t = [], []
    for _ in range(iters):
        base_t.append(time_once(baseline, device))
        ours_t.append(time_once(ours, device))
    return statistics.median(base_t), statistics.median(ours_t)


def make_case(name, cached, T, dtype, device, B=1, Hq=32, Hkv=8, D=128):
    g = torch.Generator(device="cpu").manual_seed(0)
    S_max = cached + T
    q = torch.randn(B, T, Hq, D, generator=g).to(device=device, dtype=dtype)
    k = torch.randn(B, T, Hkv, D, generator=g).to(device=device, dtype=dtype)
    v = torch.randn(B, T, Hkv, D, generator=g).to(device=device, dtype=dtype)
    k_cache = torch.randn(B, S_max, Hkv, D, generator=g).to(device=device, dtype=dtype)
    v_cache = torch.randn(B, S_max, Hkv, D, generator=g).to(device=device, dtype=dtype)
    seqlens = torch.full((B,), cached, dtype=torch.int32, device=device)
    L = cached + T

    def ours():
        fluid_rt.ops.causal_attention(q, k_cache, v_cache, seqlens, k, v)

    # The baseline attends over views of the same cache (already holding the block's k/v).
    kt, vt = k_cache[:, :L].transpose(1, 2), v_cache[:, :L].transpose(1, 2)
    qt = q.transpose(1, 2)
    if cached == 0:

        def baseline():
            F.scaled_dot_product_attention(qt, kt, vt, is_causal=True, enable_gqa=True)
    else:
        mask = torch.ones(T, L, dtype=torch.bool, device=device).tril(diagonal=L - T)

        def baseline():
            F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True)

    return name, baseline, ours


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch / OpenMP threads on the CPU")
    ap.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--iters", type=int, default=0, help="timed runs per case (default 30 cpu / 200 cuda)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    iters = args.iters or (30 if args.device == "cpu" else 200)
    rows = []
    with torch.no_grad():
        for dt_name in args.dtype:
            dtype = getattr(torch, dt_name)
            for name, cached, T in [
                ("decode q=17 kv=2048 gqa32/8 d128", 2048, 17),
                ("prefill q=kv=512 gqa32/8 d128", 0, 512),
            ]:
                case, baseline, ours = make_case(name, cached, T, dtype, args.device)
                base_ms, ours_ms = median_ms_pair(baseline, ours, args.device, 3, iters)
                rows.append(
                    {
                        "case": f"{case} {dt_name}",
                        "device": args.device,
                        "cpu_isa": fluid_rt.cpu_isa() if args.device == "cpu" else None,
                        "kernel": "torch SDPA (fallback)"
                        if args.device == "cpu"
                        and fluid_rt.ops.attention.uses_torch_fallback(T, cached + T, 32, 128)
                        else "ours",
                        "threads": args.threads if args.device == "cpu" else None,
                        "sdpa_ms": base_ms,
                        "ours_ms": ours_ms,
                        "speedup": base_ms / ours_ms,
                    }
                )
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    if args.device == "cpu":
        print(f"CPU path {fluid_rt.cpu_isa()}, {args.threads} threads")
    print(f"{'case':<44} {'SDPA ms':>10} {'ours ms':>10} {'speedup':>8}")
    for r in rows:
        print(
            f"{r['case']:<44} {r['sdpa_ms']:>10.3f} {r['ours_ms']:>10.3f} {r['speedup']:>7.2f}x  {r['kernel']}"
        )


if __name__ == "__main__":
    main()
