"""The FLUID reference decode loop on HF transformers: the baseline of fluid_rt's end-to-end benchmarks.

This re-implements, in our own code, what the public FLUID reference (`generate_dynamic_kv`) does,
the way it does it (docs/spec/decoding.md, "One block (the reference loop)"), on a plain
`transformers.LlamaForCausalLM` with a `DynamicCache`:

    prefill                       1 forward over the prompt (KV kept)
    per block
      K = clamp(argmax(khead(h_last)) + 1, min_block, block_size)
      draft passes                1 forward of the K-block per pass, block KV cropped away after it
      remask:  verify             1 forward of the drafted block, KV kept
               mismatch at f      crop the block KV, 1 recommit forward of block[:f] + [pred_f]
      no remask: commit           1 forward of the drafted block, KV kept

So it costs `1 + sum(draft_passes) + blocks + mismatches` forwards with remask, and
`1 + sum(draft_passes) + blocks` without. Like the reference it can overshoot `max_new_tokens`
by part of a block (it only stops between blocks); fluid_rt returns exactly `max_new_tokens`.

Only batch size 1 (the reference couples batch rows; for one row it is the spec's semantics).

CLI:
    python benchmarks/reference_loop.py --model DIR --prompt-ids 1,2,3 [--threshold 0.9 ...]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time

import torch
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

KHEAD_PREFIX = "diffusion_k_head."


# ----------------------------------------------------------------------------------------------
# Loading


def _llama_config_from(raw: dict) -> LlamaConfig:
    """HF config dict (PanguEmbedded or llama) -> LlamaConfig.

    openPangu-Embedded is mathematically Llama with biases on q, k, v and o (docs/spec/models.md), which
    is exactly what `attention_bias=True` gives in transformers' Llama.
    """
    model_type = raw.get("model_type", "")
    if model_type not in ("PanguEmbedded", "llama"):
        raise ValueError(f"config.json: model_type {model_type!r} is neither 'PanguEmbedded' nor 'llama'")
    kwargs = dict(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=raw["num_attention_heads"],
        num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        hidden_act=raw.get("hidden_act", "silu"),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
        max_position_embeddings=raw.get("max_position_embeddings", 4096),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        bos_token_id=raw.get("bos_token_id"),
        eos_token_id=raw.get("eos_token_id"),
        pad_token_id=raw.get("pad_token_id"),
    )
    if "head_dim" in raw:
        kwargs["head_dim"] = raw["head_dim"]
    if model_type == "PanguEmbedded":
        kwargs["attention_bias"] = bool(raw.get("bias", False))
        kwargs["mlp_bias"] = False
        kwargs["rope_theta"] = raw.get("rope_theta", 10000.0)
    else:
        kwargs["attention_bias"] = bool(raw.get("attention_bias", False))
        kwargs["mlp_bias"] = bool(raw.get("mlp_bias", False))
        if raw.get("rope_parameters") is not None:
            kwargs["rope_parameters"] = raw["rope_parameters"]
        else:
            kwargs["rope_theta"] = raw.get("rope_theta", 10000.0)
            if raw.get("rope_scaling") is not None:
                kwargs["rope_scaling"] = raw["rope_scaling"]
    return LlamaConfig(**kwargs)


def load_khead(model_dir: str, hidden_size: int, dtype: torch.dtype) -> torch.nn.Sequential:
    """`model_head.bin` (torch pickle, loaded with weights_only=True) or `model_head.safetensors`
    -> Sequential(Linear(H, H//4), GELU(), Linear(H//4, max_k))."""
    st_path = os.path.join(model_dir, "model_head.safetensors")
    bin_path = os.path.join(model_dir, "model_head.bin")
    if os.path.exists(st_path):
        from safetensors.torch import load_file

        raw = load_file(st_path)
    elif os.path.exists(bin_path):
        raw = torch.load(bin_path, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{model_dir}: no model_head.bin / model_head.safetensors (the K-head)")
    sd = {k[len(KHEAD_PREFIX) :]: v for k, v in raw.items() if k.startswith(KHEAD_PREFIX)}
    if set(sd) != {"0.weight", "0.bias", "2.weight", "2.bias"}:
        raise ValueError(f"K-head: expected keys {KHEAD_PREFIX}{{0,2}}.{{weight,bias}}, got {sorted(raw)}")
    inner, max_k = sd["0.weight"].shape[0], sd["2.weight"].shape[0]
    if sd["0.weight"].shape[1] != hidden_size:
        raise ValueError(f"K-head: input dim {sd['0.weight'].shape[1]} != hidden_size {hidden_size}")
    khead = torch.nn.Sequential(
        torch.nn.Linear(hidden_size, inner), torch.nn.GELU(), torch.nn.Linear(inner, max_k)
    )
    khead.load_state_dict(sd)
    return khead.to(dtype).eval()


def load_hf_fluid_model(
    model_dir: str, dtype: torch.dtype = torch.float32, device="cpu", attn_implementation: str = "sdpa"
):
    """A FLUID checkpoint directory (HF layout) -> (LlamaForCausalLM, K-head), both eval, on `device`.

    `config.json` with model_type "PanguEmbedded" is mapped to a LlamaConfig with
    attention_bias=True (biases on q, k, v, o); "llama" loads as itself. Weights come from
    `model.safetensors` or a sharded `model.safetensors.index.json` (transformers loads them).
    """
    with open(os.path.join(model_dir, "config.json")) as f:
        raw = json.load(f)
    config = _llama_config_from(raw)
    model = LlamaForCausalLM.from_pretrained(
        model_dir, config=config, dtype=dtype, attn_implementation=attn_implementation
    )
    model.to(device).eval()
    khead = load_khead(model_dir, config.hidden_size, dtype).to(device)
    return model, khead


# ----------------------------------------------------------------------------------------------
# The loop


def _crop_to(cache: DynamicCache, length: int) -> None:
    """Drop cache entries past `length` (a negative argument to `crop` removes that many tokens,
    which means the same in older and newer transformers)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class _Counter:
    """Runs the base model + lm_head on [1, T] tokens over a DynamicCache and counts forwards."""

    def __init__(self, hf_model):
        self.hf_model = hf_model
        self.forwards = 0
        # transformers renamed `past_key_values` to `cache`; pass whichever this version takes.
        params = inspect.signature(hf_model.model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    def __call__(self, ids: list[int], cache: DynamicCache):
        self.forwards += 1
        device = self.hf_model.lm_head.weight.device
        x = torch.tensor([ids], dtype=torch.long, device=device)
        out = self.hf_model.model(input_ids=x, use_cache=True, **{self.cache_kw: cache})
        hidden = out.last_hidden_state[0]  # [T, H], after the final RMSNorm
        logits = self.hf_model.lm_head(hidden).float()  # [T, V]
        return logits, hidden


def _horizon(khead, h_last: torch.Tensor, min_block: int, block_size: int) -> int:
    k = int(torch.argmax(khead(h_last.to(khead[0].weight.dtype)))) + 1
    return max(min_block, min(block_size, k))


@torch.no_grad()
def reference_generate(
    hf_model,
    khead,
    prompt_ids,
    *,
    mask_token_id: int,
    eos_token_id=None,
    threshold: float = 0.9,
    block_size: int = 16,
    min_block: int = 4,
    remask: bool = True,
    max_new_tokens: int = 64,
) -> dict:
    """Decode one sequence with the FLUID reference loop (docs/spec/decoding.md, batch size 1).

    Returns dict(tokens=[new token ids, EOS included when hit; may exceed max_new_tokens like the
    reference], trace=[{K, draft_passes, committed, mismatch}] per block, forwards=int, prefill
    included), steps=[per block, the step s of each draft pass]. `committed` counts the tokens
    committed from the block before any EOS cut; `mismatch` is the first rejected index or None.
    """
    prompt_ids = [int(t) for t in prompt_ids]
    if not prompt_ids:
        raise ValueError("prompt_ids: empty")
    if not 1 <= min_block <= block_size:
        raise ValueError(
            f"min_block/block_size: need 1 <= min_block <= block_size, got {min_block}, {block_size}"
        )
    eos = (
        set()
        if eos_token_id is None
        else ({int(eos_token_id)} if isinstance(eos_token_id, int) else {int(e) for e in eos_token_id})
    )
    run = _Counter(hf_model)
    cache = DynamicCache(config=hf_model.config)

    logits, hidden = run(prompt_ids, cache)  # prefill keeps its KV
    next_logits, h_last = logits[-1], hidden[-1]
    P = len(prompt_ids)
    out: list[int] = []
    trace, steps = [], []

    while len(out) < max_new_tokens:
        K = _horizon(khead, h_last, min_block, block_size)
        block = [mask_token_id] * K

        # Draft loop: every pass forwards the whole K-block over the committed KV, then drops the
        # block's KV again (the cache goes back to P entries).
        s = 0
        steps.append([])  # the step of each pass: their count is the block's draft passes
        while s < K:
            L, _ = run(block, cache)
            _crop_to(cache, P)
            steps[-1].append(s)
            full = torch.cat([next_logits[None], L[:-1]], dim=0)  # full[j] predicts block[j]
            prob_max, tok = torch.softmax(full, dim=-1).max(dim=-1)
            prob_max, tok = prob_max.tolist(), tok.tolist()
            block[s] = tok[s]
            jump, contiguous = 0, True
            for j in range(s + 1, K):
                if prob_max[j] > threshold:
                    block[j] = tok[j]
                    if contiguous:
                        jump += 1
                else:
                    contiguous = False
            if mask_token_id not in block:
                break
            s += 1 + jump

        mismatch = None
        if remask:
            V, Hv = run(block, cache)  # verify: this time the block KV stays
            pred = torch.cat([next_logits[None], V[:-1]], dim=0).argmax(dim=-1).tolist()
            for j in range(K):
                if block[j] != pred[j]:
                    mismatch = j
                    break
            if mismatch is None:
                committed = block
                next_logits, h_last = V[-1], Hv[-1]
            else:
                committed = block[:mismatch] + [pred[mismatch]]
                _crop_to(cache, P)  # drop the block KV, recommit the accepted segment
                L, Hc = run(committed, cache)
                next_logits, h_last = L[-1], Hc[-1]
        else:
            committed = block
            L, Hc = run(block, cache)  # commit the drafted block as it is (KV kept)
            next_logits, h_last = L[-1], Hc[-1]
        P += len(committed)
        trace.append(dict(K=K, draft_passes=len(steps[-1]), committed=len(committed), mismatch=mismatch))

        hit = next((i for i, t in enumerate(committed) if t in eos), None)
        if hit is not None:
            out.extend(committed[: hit + 1])
            break
        out.extend(committed)

    return dict(tokens=out, trace=trace, forwards=run.forwards, steps=steps)


def trace_stats(result: dict) -> dict:
    """Summary of a reference run: tokens per forward, mean K, draft passes per block, reject rate."""
    tr = result["trace"]
    n = len(result["tokens"])
    return dict(
        tokens=n,
        forwards=result["forwards"],
        tokens_per_forward=n / result["forwards"],
        blocks=len(tr),
        mean_K=sum(b["K"] for b in tr) / max(1, len(tr)),
        mean_draft_passes=sum(b["draft_passes"] for b in tr) / max(1, len(tr)),
        mean_committed=sum(b["committed"] for b in tr) / max(1, len(tr)),
        mismatch_blocks=sum(b["mismatch"] is not None for b in tr),
    )


# ----------------------------------------------------------------------------------------------
# CLI


def _dtype(name: str) -> torch.dtype:
    return {
        "float32": torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float64": torch.float64,
    }[name]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="checkpoint directory (HF layout + model_head.bin)")
    ap.add_argument("--prompt-ids", required=True, help="comma-separated token ids")
    ap.add_argument(
        "--mask-token-id",
        type=int,
        default=None,
        help="default: fluid.json's mask_token_id, else vocab_size - 1",
    )
    ap.add_argument("--eos-token-id", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--min-block", type=int, default=4)
    ap.add_argument("--no-remask", action="store_true")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16", "float64"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = ap.parse_args(argv)

    model, khead = load_hf_fluid_model(args.model, _dtype(args.dtype), args.device)
    mask = args.mask_token_id
    if mask is None:
        fj = os.path.join(args.model, "fluid.json")
        if os.path.exists(fj):
            with open(fj) as f:
                mask = json.load(f)["mask_token_id"]
        else:
            mask = model.config.vocab_size - 1
    prompt = [int(t) for t in args.prompt_ids.split(",") if t.strip()]
    t0 = time.perf_counter()
    res = reference_generate(
        model,
        khead,
        prompt,
        mask_token_id=mask,
        eos_token_id=args.eos_token_id,
        threshold=args.threshold,
        block_size=args.block_size,
        min_block=args.min_block,
        remask=not args.no_remask,
        max_new_tokens=args.max_new_tokens,
    )
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    stats = trace_stats(res)
    if args.json:
        print(json.dumps(dict(res, stats=stats, seconds=seconds)))
        return
    print("tokens:", ",".join(map(str, res["tokens"])))
    print("trace:")
    print(f"  {'block':>5} {'K':>3} {'drafts':>6} {'committed':>9} {'mismatch':>8}")
    for i, b in enumerate(res["trace"]):
        mm = "-" if b["mismatch"] is None else b["mismatch"]
        print(f"  {i:>5} {b['K']:>3} {b['draft_passes']:>6} {b['committed']:>9} {mm:>8}")
    print("forwards:", res["forwards"])
    print(
        "stats:", ", ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in stats.items())
    )
    print(f"seconds: {seconds:.3f}")


if __name__ == "__main__":
    sys.exit(main())
