"""Benchmark fluid_rt.ops.token_entropy against the fastest eager torch composition.

Baseline: several eager compositions of the same four outputs are timed in the same run and the
fastest one is the baseline (log_softmax once, its exp, the entropy as an elementwise product + sum
or as a batched dot, max+argmax in one torch.max, logsumexp recovered from log_softmax at the argmax).
Read bandwidth: a large tensor's .sum() (a pure read) in the same run, same threads/device.

    python benchmarks/bench_entropy.py --device cpu --threads 2
    python benchmarks/bench_entropy.py --device cuda --shape 64x153376 --shape 1x153376 --json
    python benchmarks/bench_entropy.py --device cuda --graph     # kernel time without launch overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import use_checkout  # noqa: E402

use_checkout()

import fluid_rt
from fluid_rt.ops import token_entropy

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _eager_mul_sum(x: torch.Tensor, temperature: float):
    y = x.float() / temperature if temperature != 1.0 else x.float()
    logp = torch.log_softmax(y, -1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    mx, am = y.max(-1)
    lse = mx - logp.gather(-1, am.unsqueeze(-1)).squeeze(-1)
    return entropy, p.gather(-1, am.unsqueeze(-1)).squeeze(-1), am, lse


def _eager_bmm(x: torch.Tensor, temperature: float):
    y = x.float() / temperature if temperature != 1.0 else x.float()
    logp = torch.log_softmax(y, -1)
    p = logp.exp()
    rows = p.reshape(-1, 1, p.shape[-1])
    entropy = -torch.bmm(rows, logp.reshape(-1, p.shape[-1], 1)).reshape(p.shape[:-1])
    mx, am = y.max(-1)
    lse = mx - logp.gather(-1, am.unsqueeze(-1)).squeeze(-1)
    return entropy, torch.exp(mx - lse), am, lse


def _eager_plain(x: torch.Tensor, temperature: float):
    y = x.float() / temperature
    logp = torch.log_softmax(y, -1)
    p = logp.exp()
    return -(p * logp).sum(-1), p.max(-1).values, y.argmax(-1), torch.logsumexp(y, -1)


BASELINES = {"mul_sum": _eager_mul_sum, "bmm_dot": _eager_bmm, "plain": _eager_plain}


def _timer(device: str, graph: bool = False):
    if device == "cuda" and graph:
        # GPU time alone: 10 calls captured in a CUDA graph, replayed (no host/launch overhead).
        def run(fn, iters, warmup):
            for _ in range(max(warmup, 2)):
                fn()
            torch.cuda.synchronize()
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(10):
                    fn()
            g.replay()
            torch.cuda.synchronize()
            times = []
            for _ in range(iters):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                g.replay()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b) / 10)
            return statistics.median(times)
    elif device == "cuda":

        def run(fn, iters, warmup):
            for _ in range(warmup):
                fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(iters):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                fn()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            return statistics.median(times)
    else:

        def run(fn, iters, warmup):
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            return statistics.median(times)

    return run


def read_bandwidth_gbs(device: str, run, iters: int) -> float:
    """GB/s of a pure read: the sum of a tensor much larger than the caches."""
    n = (256 << 20) // 4 if device == "cpu" else (1 << 30) // 4
    big = torch.ones(n, device=device)
    ms = run(lambda: big.sum(), iters, 3)
    return big.numel() * 4 / (ms * 1e-3) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--shape", action="append", help="ROWSxV, repeatable (default: a standard set)")
    ap.add_argument("--dtype", default="fp32,bf16", help="comma list of fp32,bf16,fp16")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--iters", type=int, default=0, help="timed runs per case (default: 30 CPU, 100 CUDA)")
    ap.add_argument(
        "--graph", action="store_true", help="CUDA: time graph replays (kernel time, no launch overhead)"
    )
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    device = args.device
    iters = args.iters or (30 if device == "cpu" else 100)
    shapes = args.shape or ["64x153376", "1x153376", "8x50257", "256x32000"]
    run = _timer(device, args.graph)
    bw = read_bandwidth_gbs(device, _timer(device), iters)

    results = []
    for shape in shapes:
        rows, V = (int(v) for v in shape.lower().split("x"))
        for dname in args.dtype.split(","):
            dtype = DTYPES[dname]
            g = torch.Generator().manual_seed(0)
            x = (torch.randn(rows, V, generator=g) * 3).to(dtype).to(device)
            T = args.temperature
            base_ms = {name: run(lambda f=f: f(x, T), max(5, iters // 3), 2) for name, f in BASELINES.items()}
            best = min(base_ms, key=base_ms.get)
            base = run(lambda: BASELINES[best](x, T), iters, 2)
            ours = run(lambda: token_entropy(x, T), iters, 3)
            gbs = x.numel() * x.element_size() / (ours * 1e-3) / 1e9
            results.append(
                dict(
                    shape=[rows, V],
                    dtype=dname,
                    device=device,
                    threads=args.threads,
                    graph=args.graph,
                    cpu_isa=fluid_rt.cpu_isa() if device == "cpu" else None,
                    baseline=best,
                    baseline_ms=base,
                    baseline_candidates_ms=base_ms,
                    ours_ms=ours,
                    speedup=base / ours,
                    ours_gbs=gbs,
                    read_bw_gbs=bw,
                    bw_fraction=gbs / bw,
                )
            )

    if args.json:
        print(json.dumps(dict(build=fluid_rt.build_info(), results=results), indent=2))
        return
    dev = (
        torch.cuda.get_device_name()
        if device == "cuda"
        else f"cpu path {fluid_rt.cpu_isa()}, {args.threads} threads"
    )
    print(f"token_entropy on {dev}; measured read bandwidth {bw:.1f} GB/s (big tensor .sum())")
    hdr = f"{'shape':>12} {'dtype':>5} {'baseline':>9} {'base ms':>9} {'ours ms':>9} {'ratio':>7} {'GB/s':>8} {'of bw':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in results:
        print(
            f"{'x'.join(map(str, r['shape'])):>12} {r['dtype']:>5} {r['baseline']:>9} {r['baseline_ms']:9.3f} "
            f"{r['ours_ms']:9.3f} {r['speedup']:6.1f}x {r['ours_gbs']:8.1f} {100 * r['bw_fraction']:5.0f}%"
        )


if __name__ == "__main__":
    main()
