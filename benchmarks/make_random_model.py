"""Write a Pangu-shaped random FLUID benchmark model in HF layout (no tokenizer).

    python benchmarks/make_random_model.py --out /tmp/pangu-random [--layers 8 --hidden 512 ...]

The directory gets
    config.json        model_type "PanguEmbedded", bias true (q, k, v, o), SwiGLU, rope_theta 1.6e7
    model.safetensors  float32, Llama tensor names (docs/spec/models.md)
    model_head.bin     the K-head state dict, keys diffusion_k_head.{0,2}.{weight,bias}, max_k 16
    fluid.json         {"mask_token_id": vocab - 1, "max_k": 16, "end_of_think_token_id": null}

Random weights alone give either flat next-token distributions (nothing crosses a 0.9 confidence
threshold) or, with sharp ones, drafts at MASK positions that are confidently wrong every time, and
a K-head stuck on one K. To make the decode loop behave more like it does on a FLUID model, so
that benchmarks exercise accepted jumps, rejected drafts, full-block accepts and varied horizons:
  * the lm_head is scaled up (`--lm-head-scale`, the std of the logits): distributions are peaky
    and a fair share of positions are confident;
  * token embeddings are small (`--embed-scale`) and queries weak (`--q-scale`, near-uniform
    attention), so the residual stream is dominated by attention over the context and the
    prediction at a MASK position often agrees with the one at the real token;
  * the mask token is never predicted (its lm_head row is zero);
  * the K-head is calibrated on the model's own hidden states (`calibrate_khead`) so that
    argmax + 1 spreads over K = 4 .. max_k (K < 4 is ruled out; the reference clamps to 4 anyway).
With the defaults, the reference loop (threshold 0.9, block 16) rejects drafts in roughly half
the blocks and the greedy text falls into loops at times, as it does on the golden tiny models.
Everything is drawn from one torch.Generator seeded by `--seed`: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from safetensors.torch import save_file


def make_state_dict(
    *,
    layers: int,
    hidden: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab: int,
    max_k: int,
    seed: int,
    lm_head_scale: float,
    mask_embed_scale: float,
    embed_scale: float,
    q_scale: float,
) -> tuple[dict, dict]:
    """-> (model state dict with HF Llama names, K-head state dict), all float32, deterministic."""
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"heads: need hidden % heads == 0 and heads % kv_heads == 0 "
            f"(hidden {hidden}, heads {heads}, kv_heads {kv_heads})"
        )
    if hidden % 4:
        raise ValueError(f"hidden: must be divisible by 4 for the K-head, got {hidden}")
    g = torch.Generator().manual_seed(seed)
    head_dim = hidden // heads

    def randn(*shape, std):
        return torch.randn(*shape, generator=g, dtype=torch.float32) * std

    def linear(out_f, in_f):
        # 1/sqrt(fan_in): every layer changes the residual stream by O(1), so attention actually
        # mixes context into each position (std 0.02 would leave a bigram model).
        return randn(out_f, in_f, std=in_f**-0.5)

    sd = {}
    mask_id = vocab - 1
    emb = randn(vocab, hidden, std=embed_scale)
    emb[mask_id] *= mask_embed_scale
    sd["model.embed_tokens.weight"] = emb
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = torch.ones(hidden)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(hidden)
        sd[p + "self_attn.q_proj.weight"] = linear(heads * head_dim, hidden) * q_scale
        sd[p + "self_attn.q_proj.bias"] = randn(heads * head_dim, std=0.1) * q_scale
        sd[p + "self_attn.k_proj.weight"] = linear(kv_heads * head_dim, hidden)
        sd[p + "self_attn.k_proj.bias"] = randn(kv_heads * head_dim, std=0.1)
        sd[p + "self_attn.v_proj.weight"] = linear(kv_heads * head_dim, hidden)
        sd[p + "self_attn.v_proj.bias"] = randn(kv_heads * head_dim, std=0.1)
        sd[p + "self_attn.o_proj.weight"] = linear(hidden, heads * head_dim)
        sd[p + "self_attn.o_proj.bias"] = randn(hidden, std=0.1)
        sd[p + "mlp.gate_proj.weight"] = linear(intermediate, hidden)
        sd[p + "mlp.up_proj.weight"] = linear(intermediate, hidden)
        sd[p + "mlp.down_proj.weight"] = linear(hidden, intermediate)
    sd["model.norm.weight"] = torch.ones(hidden)
    lm_head = randn(vocab, hidden, std=lm_head_scale * hidden**-0.5)
    lm_head[mask_id] = 0.0  # a FLUID model never emits its mask token
    sd["lm_head.weight"] = lm_head

    inner = hidden // 4
    k_bias = randn(max_k, std=0.5)
    k_bias[: min(3, max_k)] -= 20.0  # K = 1..3 never proposed
    khead = {
        "diffusion_k_head.0.weight": randn(inner, hidden, std=hidden**-0.5),
        "diffusion_k_head.0.bias": randn(inner, std=0.1),
        "diffusion_k_head.2.weight": randn(max_k, inner, std=3.0 * inner**-0.5),
        "diffusion_k_head.2.bias": k_bias,
    }
    return sd, khead


def calibrate_khead(sd: dict, khead: dict, config: dict, seed: int, n_tokens: int = 256) -> None:
    """Spread the K-head's proposals (in place).

    The final hidden states of one model share a large common component, so a random K-head
    proposes nearly the same K everywhere. Run the model once over a seeded random sequence and
    standardise each output logit of the K-head over those hidden states (zero mean, std 2):
    then argmax + 1 moves with the hidden state and covers K = 4 .. max_k.
    """
    from transformers import LlamaForCausalLM

    try:  # the same Pangu -> Llama mapping as the baseline loop
        from benchmarks.reference_loop import _llama_config_from
    except ImportError:  # run as a script: benchmarks/ is sys.path[0]
        from reference_loop import _llama_config_from

    model = LlamaForCausalLM(_llama_config_from(config)).eval()
    model.load_state_dict(sd)
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, config["vocab_size"] - 1, (1, n_tokens), generator=g)
    with torch.no_grad():
        h = model.model(input_ids=ids).last_hidden_state[0]  # [T, H], final-normed
        z = torch.nn.functional.gelu(
            h @ khead["diffusion_k_head.0.weight"].T + khead["diffusion_k_head.0.bias"]
        )
        logits = z @ khead["diffusion_k_head.2.weight"].T  # [T, max_k]
        mean, std = logits.mean(0), logits.std(0).clamp_min(1e-6)
        khead["diffusion_k_head.2.weight"] = khead["diffusion_k_head.2.weight"] * (2.0 / std)[:, None]
        keep = khead["diffusion_k_head.2.bias"] < -10.0  # the K < 4 outputs stay ruled out
        bias = -mean * (2.0 / std)
        bias[keep] = -1e4
        khead["diffusion_k_head.2.bias"] = bias


def write_model(
    out: str,
    *,
    layers=8,
    hidden=512,
    heads=8,
    kv_heads=2,
    intermediate=1536,
    vocab=32000,
    max_k=16,
    seed=0,
    lm_head_scale=12.0,
    embed_scale=0.1,
    q_scale=0.1,
    mask_embed_scale=1.0,
    rope_theta=1.6e7,
) -> int:
    """Write the model directory; returns its size in bytes."""
    sd, khead = make_state_dict(
        layers=layers,
        hidden=hidden,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vocab=vocab,
        max_k=max_k,
        seed=seed,
        lm_head_scale=lm_head_scale,
        mask_embed_scale=mask_embed_scale,
        embed_scale=embed_scale,
        q_scale=q_scale,
    )
    config = {
        "architectures": ["PanguEmbeddedForCausalLM"],
        "model_type": "PanguEmbedded",
        "bias": True,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": rope_theta,
        "tie_word_embeddings": False,
        "vocab_size": vocab,
        "max_position_embeddings": 32768,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
    }
    calibrate_khead(sd, khead, config, seed)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(out, "fluid.json"), "w") as f:
        json.dump({"mask_token_id": vocab - 1, "max_k": max_k, "end_of_think_token_id": None}, f, indent=2)
    save_file(
        {k: v.contiguous() for k, v in sd.items()},
        os.path.join(out, "model.safetensors"),
        metadata={"format": "pt"},
    )
    torch.save(khead, os.path.join(out, "model_head.bin"))
    return sum(os.path.getsize(os.path.join(out, n)) for n in os.listdir(out))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=None, help="default: 3 * hidden")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--max-k", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--lm-head-scale",
        type=float,
        default=12.0,
        help="std of the logits (final hidden is unit RMS): higher = peakier",
    )
    ap.add_argument("--embed-scale", type=float, default=0.1, help="std of the token embeddings")
    ap.add_argument("--q-scale", type=float, default=0.1, help="scale of q_proj (low = flat attention)")
    ap.add_argument("--mask-embed-scale", type=float, default=1.0, help="extra factor on the mask embedding")
    ap.add_argument("--rope-theta", type=float, default=1.6e7)
    args = ap.parse_args(argv)
    size = write_model(
        args.out,
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate or 3 * args.hidden,
        vocab=args.vocab,
        max_k=args.max_k,
        seed=args.seed,
        lm_head_scale=args.lm_head_scale,
        mask_embed_scale=args.mask_embed_scale,
        embed_scale=args.embed_scale,
        q_scale=args.q_scale,
        rope_theta=args.rope_theta,
    )
    n_params = args.vocab * args.hidden * 2 + args.layers * (
        2 * args.hidden * args.hidden * (1 + args.kv_heads / args.heads)
        + 3 * args.hidden * (args.intermediate or 3 * args.hidden)
    )
    print(
        f"wrote {args.out}: {size / 2**20:.1f} MiB, ~{n_params / 1e6:.1f} M parameters "
        f"(layers {args.layers}, hidden {args.hidden}, heads {args.heads}/{args.kv_heads}, "
        f"vocab {args.vocab}, mask_token_id {args.vocab - 1}, seed {args.seed})"
    )


if __name__ == "__main__":
    main()
