"""SmolLM2-135M-Instruct (the embedded GGUF): fluid_rt's Transformer vs transformers' LlamaForCausalLM
on the same weights, dtype and threads, in one run.

Measured per dtype (float32, bfloat16):
  prefill      one forward over a `--prompt`-token prompt into an empty cache (ms)
  decode step  one single-token forward at context ~prompt (ms, median over the greedy steps)
  greedy       tokens/s of a `--new`-token greedy loop after the prefill (argmax on the host each step,
               both sides run the same loop: ours on fluid_rt's KVCache, transformers with its
               DynamicCache)
  generate     transformers' own `generate()` vs fluid_rt's `Decoder` in AR mode (the product
               path: commit kernel, stop handling), decode tokens/s after the prefill

Both models get the state dict fluid_rt.weights.gguf.load_gguf returns (tests/test_gguf.py checks
it equals transformers' own GGUF load tensor by tensor), so transformers' slow GGUF reader is not
timed. Medians of `--repeats` runs after a warm-up.

    python benchmarks/bench_model.py [--threads 2] [--prompt 128] [--new 64] [--repeats 5] [--isa avx2] [--json]
    python benchmarks/bench_model.py --profile      # where fluid_rt's decode step spends its time

fluid_rt runs on the CPU path ``--isa``, else ``FLUID_RT_CPU_ISA``, else the best this CPU has
(printed); transformers keeps torch's own ISA. The last lines are a summary for scripts, one per
dtype: ``summary model path=<path> dtype=<dtype> prefill=<x> decode_step=<x> greedy=<x> generate=<x>``
(speedups, > 1: fluid_rt is faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from common import use_checkout  # noqa: E402

use_checkout()

import fluid_rt  # noqa: E402
from fluid_rt.cache import KVCache  # noqa: E402
from fluid_rt.cpu_isa import set_cpu_isa  # noqa: E402
from fluid_rt.decode import DecodeConfig, Decoder  # noqa: E402
from fluid_rt.model import Transformer  # noqa: E402
from fluid_rt.weights.gguf import default_model_path, load_gguf  # noqa: E402


def hf_model(cfg, state, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=cfg.tie_word_embeddings,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=list(cfg.eos_token_ids),
        pad_token_id=cfg.pad_token_id,
        attention_bias=cfg.attention_bias,
        mlp_bias=cfg.mlp_bias,
    )
    model = LlamaForCausalLM(config).to(dtype)  # (not on meta: the RoPE buffer is not in the state dict)
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)
    model.generation_config.pad_token_id = cfg.pad_token_id
    return model.eval()


def prompt_ids(tok, n):
    """A chat prompt of exactly n tokens: the user message is cut to fit."""
    marker = "\x00"
    head, tail = tok.apply_chat_template([{"role": "user", "content": marker}]).split(marker)
    head, tail = tok.encode(head), tok.encode(tail)
    text = (
        "Here are my notes on European capitals: Paris is the capital of France, Berlin of Germany, "
        "Madrid of Spain and Rome of Italy. "
    ) * 20 + "Summarize them in one sentence."
    body = tok.encode(text)
    keep = n - len(head) - len(tail)
    if keep < 1:
        raise ValueError(f"--prompt {n} is shorter than the chat template")
    return head + body[-keep:] + tail


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


# -- fluid_rt ------------------------------------------------------------------------------------


def ours_prefill(model, cache, ids):
    cache.reset()
    logits, _ = model(ids, cache)
    cache.seqlens += ids.shape[1]
    return logits


def ours_greedy(model, cache, ids, new):
    logits = ours_prefill(model, cache, ids)
    out, steps = [], []
    nxt = logits[:, -1].argmax(-1, keepdim=True)
    for _ in range(new):
        out.append(int(nxt))
        t0 = time.perf_counter()
        logits, _ = model(nxt, cache)
        cache.seqlens += 1
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        steps.append(time.perf_counter() - t0)
    return out, steps


# -- transformers --------------------------------------------------------------------------------


def hf_prefill(model, ids):
    return model(ids, use_cache=True)


def hf_greedy(model, ids, new):
    res = model(ids, use_cache=True)
    past = res.cache  # transformers 5: the KV cache is `cache` (was `past_key_values`)
    nxt = res.logits[:, -1].argmax(-1, keepdim=True)
    out, steps = [], []
    for _ in range(new):
        out.append(int(nxt))
        t0 = time.perf_counter()
        res = model(nxt, cache=past, use_cache=True)
        past = res.cache
        nxt = res.logits[:, -1].argmax(-1, keepdim=True)
        steps.append(time.perf_counter() - t0)
    return out, steps


def hf_generate(model, ids, new):
    return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)


def ours_generate(decoder, ids, new):
    """fluid_rt's product path (Decoder, greedy AR mode): decode tokens/s after its prefill."""
    (g,), stats = decoder.generate([ids[0].tolist()], DecodeConfig(mode="ar", max_new_tokens=new))
    return new / max(stats.wall_s - stats.prefill_s, 1e-9), g.tokens


def bench_dtype(cfg, state, ids, dtype, new, repeats):
    model = Transformer(cfg, state, dtype=dtype)
    cache = KVCache(cfg, 1, ids.shape[1] + new + 1, dtype)
    ref = hf_model(cfg, state, dtype)
    # Runs alternate between the two sides, so load from other processes hits both alike.
    times = {k: ([], []) for k in ("prefill", "generate")}
    decoder = Decoder(model)
    greedy = ([], [])
    with torch.inference_mode():
        hf_prefill(ref, ids), ours_prefill(model, cache, ids)  # warm-up
        hf_greedy(ref, ids, 4), ours_greedy(model, cache, ids, 4)
        for _ in range(repeats):
            times["prefill"][0].append(timed(lambda: hf_prefill(ref, ids))[0])
            times["prefill"][1].append(timed(lambda: ours_prefill(model, cache, ids))[0])
            greedy[0].append(hf_greedy(ref, ids, new))
            greedy[1].append(ours_greedy(model, cache, ids, new))
        ours_generate(decoder, ids, 4)
        for _ in range(max(1, repeats // 2)):
            times["generate"][0].append(timed(lambda: hf_generate(ref, ids, new))[0])
            times["generate"][1].append(ours_generate(decoder, ids, new)[0])
    med = statistics.median
    rows = {"prefill_ms": (med(times["prefill"][0]) * 1e3, med(times["prefill"][1]) * 1e3)}
    rows["decode_step_ms"] = tuple(med(s for _, steps in runs for s in steps) * 1e3 for runs in greedy)
    rows["greedy_tok_s"] = tuple(med(new / sum(steps) for _, steps in runs) for runs in greedy)
    # generate() includes its own prefill: subtract transformers' measured prefill
    gen_s = med(times["generate"][0]) - rows["prefill_ms"][0] / 1e3
    rows["generate_tok_s"] = (new / max(gen_s, 1e-9), med(times["generate"][1]))
    same = greedy[0][0][0] == greedy[1][0][0]
    return rows, same, greedy[1][0][0]


def profile_decode(cfg, state, ids, dtype, steps=16):
    from torch.profiler import ProfilerActivity, profile

    model = Transformer(cfg, state, dtype=dtype)
    cache = KVCache(cfg, 1, ids.shape[1] + steps + 1, dtype)
    with torch.inference_mode():
        ours_greedy(model, cache, ids, 4)
        ours_prefill(model, cache, ids)
        nxt = ids[:, -1:]
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                logits, _ = model(nxt, cache)
                cache.seqlens += 1
                nxt = logits[:, -1].argmax(-1, keepdim=True)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens")
    p.add_argument("--new", type=int, default=64, help="greedy tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--profile", action="store_true", help="profile fluid_rt's decode step and exit")
    p.add_argument(
        "--isa",
        choices=["portable", "avx2", "avx512"],
        default=None,
        help="fluid_rt's CPU path (default: FLUID_RT_CPU_ISA, else the best one)",
    )
    args = p.parse_args(argv)
    if args.isa:
        set_cpu_isa(args.isa)

    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg, state, tok = load_gguf(default_model_path(), dtype=torch.float32)
    ids = torch.tensor([prompt_ids(tok, args.prompt)])

    if args.profile:
        for name in args.dtypes.split(","):
            print(f"== fluid_rt decode step, {name}, context {args.prompt}")
            profile_decode(cfg, state, ids, getattr(torch, name))
        return

    results = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF, dequantized)",
        "threads": args.threads,
        "cpu_isa": fluid_rt.cpu_isa(),
        "prompt_tokens": args.prompt,
        "new_tokens": args.new,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "rows": [],
    }
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        rows, same, tokens = bench_dtype(cfg, state, ids, dtype, args.new, args.repeats)
        for metric, (base, ours) in rows.items():
            higher_is_better = metric.endswith("tok_s")
            ratio = ours / base if higher_is_better else base / ours
            results["rows"].append(
                {"dtype": name, "metric": metric, "transformers": base, "fluid_rt": ours, "speedup": ratio}
            )
        results.setdefault("same_greedy_tokens", {})[name] = same
        results.setdefault("greedy_text", {})[name] = tok.decode(tokens)

    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(
        f"SmolLM2-135M, fluid_rt cpu path {fluid_rt.cpu_isa()}, threads={args.threads}, prompt={args.prompt}, "
        f"new={args.new}, median of {args.repeats} (torch {torch.__version__}, transformers "
        f"{transformers.__version__})"
    )
    print(f"{'dtype':<9} {'metric':<16} {'transformers':>13} {'fluid_rt':>10} {'speedup':>8}")
    for r in results["rows"]:
        print(
            f"{r['dtype']:<9} {r['metric']:<16} {r['transformers']:>13.2f} {r['fluid_rt']:>10.2f} "
            f"{r['speedup']:>7.2f}x"
        )
    print(
        "speedup = fluid_rt / transformers for tok/s, transformers / fluid_rt for ms; "
        "generate_tok_s baseline is transformers' generate() (its prefill subtracted)"
    )
    for name, same in results["same_greedy_tokens"].items():
        print(f"{name}: greedy tokens identical to transformers: {same}")
    for name in args.dtypes.split(","):
        got = {
            r["metric"].rsplit("_", 2)[0] if r["metric"].endswith("_tok_s") else r["metric"][:-3]: r[
                "speedup"
            ]
            for r in results["rows"]
            if r["dtype"] == name
        }
        print(
            f"summary model path={fluid_rt.cpu_isa()} dtype={name} "
            + " ".join(f"{k}={v:.2f}" for k, v in got.items())
        )


if __name__ == "__main__":
    main()
