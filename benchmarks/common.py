"""Shared plumbing of the benchmark scripts: import path, timing, tables and JSON.

Every benchmark measures a baseline and fluid_rt in the same run (these machines are shared and
noisy) and reports medians and the ratio baseline / ours (> 1 means fluid_rt is faster).
"""

from __future__ import annotations

import glob
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_checkout() -> None:
    """Import fluid_rt from this checkout when it holds an in-place build, else the installed one;
    make ``benchmarks.*`` importable either way."""
    if glob.glob(os.path.join(ROOT, "fluid_rt", "_C*.so")):
        sys.path.insert(0, ROOT)
    else:
        import fluid_rt  # noqa: F401  (installed)

        sys.path.append(ROOT)


# Environment that holds torch's own CPU code to a fluid_rt CPU path's instruction set: MKL's BLAS,
# oneDNN (matmul and the bfloat16 primitives) and ATen's vectorized kernels each read one variable
# when torch loads. A forced path on a bigger CPU then meets the torch a machine of that class runs,
# not an AVX-512 (or AMX) one: on the avx2 path the same AVX2 + FMA, on the portable path x86-64's
# SSE level. Only a child process started with it is restricted.
TORCH_ISA_ENV = {
    "avx2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "portable": {
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "ATEN_CPU_CAPABILITY": "default",
    },
}


def child_env(path: str, threads: int, restrict_torch: bool) -> dict:
    """The environment of a benchmark child for CPU path ``path``: ``FLUID_RT_CPU_ISA``, the thread
    count, and with ``restrict_torch`` torch held to the same instruction set (``TORCH_ISA_ENV``)."""
    env = dict(os.environ, FLUID_RT_CPU_ISA=path, OMP_NUM_THREADS=str(threads))
    if restrict_torch:
        env.update(TORCH_ISA_ENV.get(path, {}))
    return env


def torch_isa_label() -> str:
    """torch's CPU code level in this process, e.g. "AVX2 (MKL AVX2, oneDNN AVX2)"."""
    import torch

    mkl = os.environ.get("MKL_ENABLE_INSTRUCTIONS", "native")
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "native")
    return f"{torch.backends.cpu.get_cpu_capability()} (MKL {mkl}, oneDNN {onednn})"


def cpu_path_label() -> str:
    """The CPU path in use, with "+amx" when its matmuls run on AMX tiles (fluid_rt.cpu_isa)."""
    import fluid_rt
    from fluid_rt.cpu_isa import amx_enabled

    isa = fluid_rt.cpu_isa()
    return f"{isa}+amx" if isa == "avx512" and amx_enabled() else isa


def median_ms(fn, *, iters: int = 50, warmup: int = 5, sync=None) -> float:
    """Median wall time of ``fn()`` in milliseconds; ``sync`` (e.g. torch.cuda.synchronize) runs
    after each call so GPU work is inside the timed region."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    """A fixed-width table of ``rows`` (dicts) with the given columns, floats to 3 significant
    decimals."""

    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print(title)
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def emit_json(name: str, device: str, rows: list[dict], **extra) -> None:
    """One JSON document per run: what benchmarks/summarize.py reads."""
    print(json.dumps({"benchmark": name, "device": device, "rows": rows, **extra}))
