"""Benchmark of the commit kernels against a plain vectorized PyTorch version of the same updates.

    python benchmarks/bench_commit.py [--device cuda|cpu] [--iters 300] [--json]

For B in {1, 8, 64} and Kmax = 16, each op is timed per call on a freshly restored random state
(the ops mutate their state; the restore is outside the timed region). CUDA: CUDA events around
the call (host launch gaps included, which is what a decode loop pays); CPU: perf_counter.
Reported: medians in microseconds and baseline / ours (> 1 means ours is faster). Before timing,
both implementations are run on the same state and must agree exactly.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import use_checkout  # noqa: E402

use_checkout()
import fluid_rt  # noqa: E402,F401
from fluid_rt.ops import draft_commit, verify_commit  # noqa: E402

MASK = 1


# --- baseline: the same updates as whole-tensor torch ops (no host sync either) -------------------


def torch_draft_commit(
    block, step, drafting, pred, score, horizon, threshold, mask_token_id, score_is_entropy
):
    kmax = block.shape[1]
    j = torch.arange(kmax, device=block.device)
    s = step.long()[:, None]
    K = horizon.long()[:, None]
    conf = score < threshold if score_is_entropy else score > threshold
    in_k = j < K
    write = drafting[:, None] & in_k & ((j == s) | ((j > s) & conf))
    block.copy_(torch.where(write, pred, block))
    unsure = in_k & (j > s) & ~conf
    new_step = torch.where(unsure, j, kmax).amin(1).minimum(K[:, 0])
    step.copy_(torch.where(drafting, new_step.int(), step))
    has_mask = ((block == mask_token_id) & in_k).any(1)
    drafting.copy_(drafting & has_mask & (new_step < K[:, 0]))


def torch_verify_commit(
    block,
    pred,
    horizon,
    verifying,
    eos_ids,
    remask,
    out_tokens,
    out_len,
    budget,
    done,
    pending,
    cache_seqlens,
    committed,
    mismatch,
):
    B, kmax = block.shape
    N = out_tokens.shape[1]
    j = torch.arange(kmax, device=block.device)
    active = verifying & ~done
    K = horizon.long()
    in_k = j < K[:, None]
    if remask:
        f = torch.where((block != pred) & in_k, j, kmax).amin(1).minimum(K)
    else:
        f = K
    has_f = f < K
    count = torch.where(has_f, f + 1, K)
    toks = torch.where(j < f[:, None], block, pred)
    is_eos = torch.isin(toks, eos_ids) & (j < count[:, None])
    first_eos = torch.where(is_eos, j, kmax).amin(1)
    len0 = out_len.long()
    n_write = torch.minimum(count, budget.long() - len0)
    eos_kept = first_eos < n_write
    n_write = torch.where(eos_kept, first_eos + 1, n_write)
    finished = eos_kept | (len0 + n_write >= budget.long())
    i = torch.arange(N, device=block.device) - len0[:, None]  # position in the committed list
    write = active[:, None] & (i >= 0) & (i < n_write[:, None])
    out_tokens.copy_(torch.where(write, toks.gather(1, i.clamp(0, kmax - 1)), out_tokens))
    out_len.add_(torch.where(active, n_write, 0).int())
    pending.copy_(torch.where(active, toks.gather(1, (count - 1)[:, None])[:, 0], pending))
    cache_seqlens.add_(torch.where(active & ~finished, count, 0).int())
    done.logical_or_(active & finished)
    committed.copy_(torch.where(active, count.int(), committed))
    mismatch.copy_(torch.where(active, torch.where(has_f, f, -1).int(), mismatch))
    verifying.logical_and_(~active)


# --- random states ---------------------------------------------------------------------------------


def draft_state(B, kmax, gen):
    K = torch.randint(4, kmax + 1, (B,), generator=gen)
    step = (torch.rand(B, generator=gen) * K).long()
    block = torch.randint(2, 1000, (B, kmax), generator=gen)
    block[torch.arange(kmax) >= step[:, None]] = MASK
    return {
        "block": block,
        "step": step.int(),
        "drafting": torch.rand(B, generator=gen) < 0.9,
        "pred": torch.randint(2, 1000, (B, kmax), generator=gen),
        "score": torch.rand(B, kmax, generator=gen),
        "horizon": K.int(),
    }


def verify_state(B, kmax, N, gen):
    K = torch.randint(4, kmax + 1, (B,), generator=gen)
    block = torch.randint(2, 1000, (B, kmax), generator=gen)
    pred = block.clone()
    rows = torch.rand(B, generator=gen) < 0.5
    cols = torch.randint(0, kmax, (B,), generator=gen)
    pred[rows, cols[rows]] += 1
    out_len = torch.randint(0, N // 2, (B,), generator=gen)
    budget = torch.minimum(out_len + torch.randint(1, N, (B,), generator=gen), torch.tensor(N))
    return {
        "block": block,
        "pred": pred,
        "horizon": K.int(),
        "verifying": torch.rand(B, generator=gen) < 0.9,
        "eos_ids": torch.tensor([2, 3]),
        "out_tokens": torch.zeros(B, N, dtype=torch.long),
        "out_len": out_len.int(),
        "budget": budget.int(),
        "done": torch.zeros(B, dtype=torch.bool),
        "pending": torch.zeros(B, dtype=torch.long),
        "cache_seqlens": torch.randint(0, 500, (B,)).int(),
        "committed": torch.zeros(B, dtype=torch.int32),
        "mismatch": torch.zeros(B, dtype=torch.int32),
    }


DRAFT_ARGS = ["block", "step", "drafting", "pred", "score", "horizon"]
VERIFY_ARGS = [
    "block",
    "pred",
    "horizon",
    "verifying",
    "eos_ids",
    None,
    "out_tokens",
    "out_len",
    "budget",
    "done",
    "pending",
    "cache_seqlens",
    "committed",
    "mismatch",
]


def call(fn, names, state, extra):
    args = [state[n] if n else extra[0] for n in names]
    if names is DRAFT_ARGS:
        fn(*args, *extra)
    else:
        fn(*args)


def time_calls(fn, names, pristine, work, extra, iters, device):
    times = []
    for _ in range(iters):
        for k, v in pristine.items():
            work[k].copy_(v)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call(fn, names, work, extra)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3)
        else:
            t0 = time.perf_counter_ns()
            call(fn, names, work, extra)
            times.append((time.perf_counter_ns() - t0) / 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--kmax", type=int, default=16)
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    a = ap.parse_args()
    device = torch.device(a.device)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for op in ["draft_commit", "verify_commit"]:
        for B in [1, 8, 64]:
            if op == "draft_commit":
                state = draft_state(B, a.kmax, gen)
                names, ours, base, extra = DRAFT_ARGS, draft_commit, torch_draft_commit, [0.9, MASK, False]
            else:
                state = verify_state(B, a.kmax, 256, gen)
                names, ours, base, extra = VERIFY_ARGS, verify_commit, torch_verify_commit, [True]
            pristine = {k: v.to(device) for k, v in state.items()}
            w_ours = {k: v.clone() for k, v in pristine.items()}
            w_base = {k: v.clone() for k, v in pristine.items()}
            call(ours, names, w_ours, extra)
            call(base, names, w_base, extra)
            for k in pristine:
                assert torch.equal(w_ours[k], w_base[k]), f"{op} B={B}: baseline and ours disagree on {k}"
            t_base = time_calls(base, names, pristine, w_base, extra, a.iters, device)
            t_ours = time_calls(ours, names, pristine, w_ours, extra, a.iters, device)
            rows.append(
                {
                    "op": op,
                    "B": B,
                    "Kmax": a.kmax,
                    "device": str(device),
                    "baseline_us": round(t_base, 2),
                    "ours_us": round(t_ours, 2),
                    "ratio": round(t_base / t_ours, 2),
                }
            )
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"commit kernels on {name}, Kmax={a.kmax}, median of {a.iters} calls (ratio = baseline / ours)")
    print(f"{'op':<14} {'B':>4} {'baseline us':>12} {'ours us':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['op']:<14} {r['B']:>4} {r['baseline_us']:>12.2f} {r['ours_us']:>10.2f} {r['ratio']:>7.2f}")


if __name__ == "__main__":
    main()
