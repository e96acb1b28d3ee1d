"""The shipped SmolLM2 FLUID adapter on real text: tokens per forward and wall-clock tokens/s of
elastic decoding against fluid_rt's own greedy AR (same model, same runtime, same prompts), per
kind of held-out prompt (facts, lists, code, arithmetic, stories, how-tos), at batch 1 and 8.

    python benchmarks/bench_adapter.py [--adapter DIR] [--prompts-per-kind 4] [--max-new-tokens 64]
        [--batch-sizes 1,8] [--repeats 1] [--threshold T] [--min-block M] [--weights float]
        [--plot out.png] [--json]

The prompts are the held-out set of ``fluid_rt.adapt.prompts.build_prompts`` (topics and templates
the adapter never trained on), in the chat template. Elastic tokens must equal AR's (checked before
anything is reported). Speed is the ratio AR time / elastic time measured in the same run
(> 1: elastic is faster); the machine is shared, so read ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch

from common import emit_json, print_table, use_checkout

use_checkout()
from fluid_rt.adapt.data import chat_ids
from fluid_rt.adapt.prompts import KINDS, build_prompts
from fluid_rt.adapt.report import decode_config
from fluid_rt.decode import DecodeConfig, Decoder
from fluid_rt.loader import load_model


def run(dec, prompts, cfg, batch):
    """(tokens per prompt, forwards per prompt, wall seconds) decoding ``prompts`` in batches."""
    toks, fwds, wall = [], [], 0.0
    for i in range(0, len(prompts), batch):
        t0 = time.perf_counter()
        gens, _ = dec.generate(prompts[i : i + batch], cfg)
        wall += time.perf_counter() - t0
        toks += [g.tokens for g in gens]
        fwds += [g.forwards for g in gens]
    return toks, fwds, wall


def measure(dec, prompts, el_cfg, ar_cfg, batch, repeats):
    el_t, ar_t = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        el_toks, el_fwd, t = run(dec, prompts, el_cfg, batch)
        el_t.append(t)
        ar_toks, _, t = run(dec, prompts, ar_cfg, batch)
        ar_t.append(t)
    if el_toks != ar_toks:
        bad = sum(a != b for a, b in zip(el_toks, ar_toks))
        raise SystemExit(f"elastic tokens differ from AR's on {bad} prompts: not lossless")
    n = sum(map(len, el_toks))
    el_s, ar_s = statistics.median(el_t), statistics.median(ar_t)
    return summary(batch, len(prompts), n, sum(el_fwd), el_s, ar_s)


def summary(batch, prompts, tokens, forwards, el_s, ar_s):
    return {
        "batch": batch,
        "seqs_per_call": min(batch, prompts),
        "prompts": prompts,
        "tokens": tokens,
        "forwards": forwards,
        "tokens_per_forward": tokens / max(forwards, 1),
        "elastic_tok_s": tokens / el_s,
        "ar_tok_s": tokens / ar_s,
        "speedup": ar_s / el_s,
        "elastic_s": el_s,
        "ar_s": ar_s,
    }


def overall(batch, rows):
    """The 'all' row of one batch size: the kinds' totals (sum of their median times)."""
    mine = [r for r in rows if r["batch"] == batch]
    total = {k: sum(r[k] for r in mine) for k in ("prompts", "tokens", "forwards", "elastic_s", "ar_s")}
    return {
        "kind": "all",
        **summary(
            batch, total["prompts"], total["tokens"], total["forwards"], total["elastic_s"], total["ar_s"]
        ),
    }


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)] + ["all"]
    batches = sorted({r["batch"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    width = 0.8 / len(batches)
    for j, b in enumerate(batches):
        get = {r["kind"]: r for r in rows if r["batch"] == b}
        xs = [i + j * width for i in range(len(kinds))]
        ax2.bar(xs, [get[k]["speedup"] for k in kinds], width, label=f"{b}")
        if j == 0:
            ax1.bar(range(len(kinds)), [get[k]["tokens_per_forward"] for k in kinds], 0.6, color="tab:green")
    ax1.set_xticks(range(len(kinds)), kinds, rotation=20)
    ax1.set_ylabel("tokens per forward (elastic)")
    ax1.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax1.set_title("drafting: tokens committed per model forward")
    ax2.set_xticks([i + width * (len(batches) - 1) / 2 for i in range(len(kinds))], kinds, rotation=20)
    ax2.set_ylabel("wall-clock speed-up, elastic / AR")
    ax2.axhline(1.0, color="gray", lw=0.8, ls="--")
    ax2.legend(
        loc="upper left", bbox_to_anchor=(1.0, 1.0), title="batch (per kind: up to\nthe kind's prompts)"
    )
    ax2.set_title("same runtime, same tokens")
    fig.suptitle("SmolLM2-135M-Instruct + gated FLUID adapter, held-out chat prompts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--adapter", default="auto", help="adapter directory (default: the shipped one)")
    ap.add_argument("--prompts-per-kind", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threshold", type=float, default=None)
    ap.add_argument("--min-block", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--weights",
        choices=["quantized", "float"],
        default="quantized",
        help="the GGUF's matrices as int8 kernels (default) or dequantized to float32",
    )
    ap.add_argument("--plot", default=None, help="write the figure to this PNG path")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(None, adapter=args.adapter, weights=args.weights)
    if lm.adapter is None:
        raise SystemExit("no adapter loaded: nothing to benchmark")
    over = {k: v for k, v in (("threshold", args.threshold), ("min_block", args.min_block)) if v is not None}
    el_cfg = decode_config(lm, args.max_new_tokens, **over)
    ar_cfg = DecodeConfig(mode="ar", max_new_tokens=args.max_new_tokens, eos_token_ids=el_cfg.eos_token_ids)
    dec = Decoder(lm.model, khead=lm.khead, mask_token_id=lm.fluid.mask_token_id)
    by_kind = defaultdict(list)
    for p in build_prompts()[1]:
        if len(by_kind[p.kind]) < args.prompts_per_kind:
            by_kind[p.kind].append(chat_ids(lm.tokenizer, p.text))
    kinds = [k for k in KINDS if by_kind[k]]
    dec.generate(by_kind[kinds[0]][:1], el_cfg)  # warm-up: first-call allocations, page faults
    rows = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        for kind in kinds:  # a kind's prompts in batches of min(batch, prompts per kind)
            rows.append({"kind": kind, **measure(dec, by_kind[kind], el_cfg, ar_cfg, batch, args.repeats)})
        if batch == 1:
            rows.append(overall(batch, rows))
        else:  # every kind mixed in real batches of `batch`
            mixed = [p for k in kinds for p in by_kind[k]]
            rows.append({"kind": "all", **measure(dec, mixed, el_cfg, ar_cfg, batch, args.repeats)})
    extra = {
        "block_size": el_cfg.block_size,
        "min_block": el_cfg.min_block,
        "threshold": el_cfg.threshold,
        "max_new_tokens": args.max_new_tokens,
        "weights": args.weights,
    }
    if args.json:
        emit_json("adapter", "cpu", rows, **extra)
    else:
        print_table(
            f"elastic vs AR, SmolLM2 + adapter ({extra})",
            rows,
            [
                "kind",
                "batch",
                "seqs_per_call",
                "prompts",
                "tokens",
                "forwards",
                "tokens_per_forward",
                "elastic_tok_s",
                "ar_tok_s",
                "speedup",
            ],
        )
    if args.plot:
        plot(rows, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
