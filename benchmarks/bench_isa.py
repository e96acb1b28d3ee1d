"""Every CPU op benchmark on every CPU path this machine has, in one run, as one table.

For each path (portable, avx2, avx512: those ``fluid_rt`` supports here) a child process is started
with ``FLUID_RT_CPU_ISA=<path>`` and times, baseline and ours alternately in the same process:

  entropy    token_entropy [64,153376] and [1,153376] float32 vs the fastest eager torch composition
             (bench_entropy.BASELINES), and the read bandwidth of a large ``.sum()``
  attention  causal_attention decode (q=17, kv=2048, GQA 32/8, D128) and prefill 512 vs SDPA
             (bench_attention.make_case), through ``fluid_rt.ops.causal_attention``: the op
             wrapper's choice (our kernel or torch's, see fluid_rt/ops/attention.py) and, as
             "kernel", our kernel forced
  norm       rms_norm with the residual add, [17, 2048] and [512, 2048], vs HF Llama's eager RMSNorm
  rope       rope_ on the q/k heads of a fused qkv, [17 | 512 tokens, 40 heads, 128], vs HF's
             ``q * cos + rotate_half(q) * sin`` written back

torch in each child is held to that path's instruction set (``--torch-isa same``, the default;
``common.TORCH_ISA_ENV``): on a forced avx2 path the baseline is the AVX2 torch an AVX2-only CPU
runs, not this CPU's AVX-512 / AMX one. ``--torch-isa native`` leaves torch alone.

Reported: medians (ms) and the same-run ratio torch / ours (> 1: fluid_rt is faster). With
``--model`` the linear, quantized-linear and model benchmarks (bench_linear.py, bench_quant.py,
bench_model.py) also run once per path as subprocesses and their own tables are printed after
this one.

    python benchmarks/bench_isa.py [--threads 2] [--iters 20] [--paths avx2,portable] [--model]
                                   [--torch-isa same|native] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from common import child_env, torch_isa_label, use_checkout  # noqa: E402

use_checkout()


# ---- the child: one path, every op ------------------------------------------------------------


def _pair(baseline, ours, iters):
    from bench_attention import median_ms_pair

    return median_ms_pair(baseline, ours, "cpu", 3, iters)


def bench_entropy(iters):
    import torch
    from bench_entropy import BASELINES, _timer, read_bandwidth_gbs

    from fluid_rt.ops import token_entropy

    rows = []
    bw = read_bandwidth_gbs("cpu", _timer("cpu"), max(5, iters // 2))
    for R, V in ((64, 153376), (1, 153376)):
        x = torch.randn(R, V, generator=torch.Generator().manual_seed(0)) * 3
        run = _timer("cpu")
        best = min(BASELINES, key=lambda n: run(lambda: BASELINES[n](x, 1.0), 5, 1))
        base, ours = _pair(lambda: BASELINES[best](x, 1.0), lambda: token_entropy(x), iters)
        gbs = x.numel() * 4 / (ours * 1e-3) / 1e9
        rows.append(
            dict(
                op="entropy",
                case=f"{R}x{V} fp32",
                torch_ms=base,
                ours_ms=ours,
                note=f"{gbs:.1f} GB/s = {100 * gbs / bw:.0f}% of {bw:.1f} read",
            )
        )
    return rows


def bench_attention(iters):
    import torch
    from bench_attention import make_case

    import fluid_rt.ops.attention as attn

    rows = []
    with torch.no_grad():
        for name, cached, T, shape in (
            ("decode q=17 kv=2048", 2048, 17, {}),
            ("prefill 512", 0, 512, {}),
            ("small q=9 kv=256 gqa9/3 d64", 256, 9, dict(Hq=9, Hkv=3, D=64)),
        ):
            case, baseline, ours = make_case(name, cached, T, torch.float32, "cpu", **shape)
            base, mine = _pair(baseline, ours, iters)
            fallback = attn.uses_torch_fallback(T, cached + T, shape.get("Hq", 32), shape.get("D", 128))
            rows.append(
                dict(
                    op="attention",
                    case=f"{name} fp32",
                    torch_ms=base,
                    ours_ms=mine,
                    note="torch fallback" if fallback else "our kernel",
                )
            )
            if fallback:  # what the kernel alone would give on this path
                with attn.force_kernel():
                    base, mine = _pair(baseline, ours, iters)
                rows.append(
                    dict(
                        op="attention",
                        case=f"{name} fp32 (kernel)",
                        torch_ms=base,
                        ours_ms=mine,
                        note="not used: slower than torch",
                    )
                )
    return rows


def bench_norm(iters):
    import torch

    from fluid_rt.ops import rms_norm

    rows = []
    g = torch.Generator().manual_seed(1)
    for R in (17, 512):
        x, add, w = (
            torch.randn(R, 2048, generator=g),
            torch.randn(R, 2048, generator=g),
            torch.randn(2048, generator=g),
        )

        def hf():  # HF Llama: residual add, then LlamaRMSNorm's ops
            h = x + add
            var = h.pow(2).mean(-1, keepdim=True)
            return w * (h * torch.rsqrt(var + 1e-5)).to(h.dtype)

        xs = x.clone()
        base, ours = _pair(hf, lambda: rms_norm(xs.copy_(x), w, 1e-5, add), iters)
        rows.append(
            dict(
                op="norm",
                case=f"[{R},2048]+add fp32",
                torch_ms=base,
                ours_ms=ours,
                note="ours includes a copy_ of x",
            )
        )
    return rows


def bench_rope(iters):
    import torch

    from fluid_rt.ops import rope_

    rows = []
    g = torch.Generator().manual_seed(2)
    H, Hkv, D = 32, 8, 128
    for T in (17, 512):
        qkv = torch.randn(1, T, (H + 2 * Hkv) * D, generator=g)
        qk = qkv[..., : (H + Hkv) * D].unflatten(-1, (H + Hkv, D))
        cos, sin = torch.randn(1, T, D, generator=g), torch.randn(1, T, D, generator=g)
        half = D // 2

        def hf():
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk.copy_(qk * cos[:, :, None] + rotated * sin[:, :, None])

        base, ours = _pair(hf, lambda: rope_(qk, cos, sin), iters)
        rows.append(dict(op="rope", case=f"{T}x{H + Hkv}x{D} fp32", torch_ms=base, ours_ms=ours, note=""))
    return rows


def child(args):
    import torch

    import fluid_rt

    torch.set_num_threads(args.threads)
    rows = []
    for fn in (bench_entropy, bench_attention, bench_norm, bench_rope):
        rows += fn(args.iters)
    for r in rows:
        r["path"] = fluid_rt.cpu_isa()
        r["torch"] = torch_isa_label()
        r["ratio"] = r["torch_ms"] / r["ours_ms"]
    print(json.dumps(rows))


# ---- the parent: one child per path, one table ------------------------------------------------


def run_path(path, args):
    env = child_env(path, args.threads, args.torch_isa == "same")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--threads",
        str(args.threads),
        "--iters",
        str(args.iters),
    ]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def run_model_benchmarks(path, args):
    env = child_env(path, args.threads, args.torch_isa == "same")
    for script, extra in (
        ("bench_linear.py", []),
        ("bench_quant.py", []),
        ("bench_model.py", ["--repeats", "3"]),
    ):
        print(f"\n=== {script} on path {path}", flush=True)
        subprocess.run(
            [sys.executable, os.path.join(HERE, script), "--threads", str(args.threads), *extra],
            env=env,
            check=False,
        )


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20, help="timed pairs per case")
    ap.add_argument("--paths", default="", help="comma list (default: every path this machine supports)")
    ap.add_argument(
        "--model",
        action="store_true",
        help="also run bench_linear.py, bench_quant.py and bench_model.py per path",
    )
    ap.add_argument(
        "--torch-isa",
        choices=["same", "native"],
        default="same",
        help="same: hold torch in each path's child to that path's instruction set (common.TORCH_ISA_ENV: "
        "what a CPU of that class runs); native: torch keeps this CPU's best",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import fluid_rt

    paths = args.paths.split(",") if args.paths else list(fluid_rt._C.cpu_isas_supported())
    results = {p: run_path(p, args) for p in paths}
    if args.json:
        print(json.dumps(dict(build=fluid_rt.build_info(), threads=args.threads, results=results), indent=2))
    else:
        print(
            f"fluid_rt CPU ops per path, {args.threads} threads, medians of {args.iters} alternated pairs; "
            "ratio = torch ms / ours ms (> 1: fluid_rt faster)"
        )
        hdr = f"{'op':<10} {'case':<32} " + " ".join(
            f"{p + ' torch/ours ms':>24} {'ratio':>6}" for p in paths
        )
        print(hdr)
        print("-" * len(hdr))
        keys = [(r["op"], r["case"]) for r in results[paths[0]]]
        for p in paths[1:]:
            keys += [(r["op"], r["case"]) for r in results[p] if (r["op"], r["case"]) not in keys]
        for op, case in keys:
            line = f"{op:<10} {case:<32} "
            for p in paths:
                r = next((r for r in results[p] if (r["op"], r["case"]) == (op, case)), None)
                line += (
                    f"{r['torch_ms']:>11.3f} / {r['ours_ms']:>10.3f} {r['ratio']:>5.2f}x "
                    if r
                    else f"{'-':>24} {'':>6} "
                )
            print(line)
        for p in paths:
            print(f"  {p:<9} torch: {results[p][0]['torch']}")
        notes = {(p, r["op"], r["case"]): r["note"] for p in paths for r in results[p] if r["note"]}
        for (p, op, case), note in notes.items():
            print(f"  {p:<9} {op} {case}: {note}")
    if args.model:
        for p in paths:
            run_model_benchmarks(p, args)


if __name__ == "__main__":
    main()
