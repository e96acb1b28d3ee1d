"""The end-of-training report: elastic decoding with the new adapter on held-out prompts, tokens
per forward per kind of prompt, and whether its tokens equal the base model's greedy ones."""

from __future__ import annotations

import dataclasses
from collections import defaultdict


def decode_config(loaded, max_new_tokens: int, **overrides):
    """The elastic ``DecodeConfig`` an adapter asks for (its ``decode`` defaults: block size =
    its max_k, min_block, threshold), EOS from the tokenizer."""
    from fluid_rt.decode import DecodeConfig

    d = dict(loaded.decode_defaults)
    tok = loaded.tokenizer
    eos = (
        (tok.eos_token_id,)
        if tok is not None and tok.eos_token_id is not None
        else tuple(loaded.config.eos_token_ids)
    )
    kw = dict(
        mode="elastic",
        max_new_tokens=max_new_tokens,
        block_size=int(d.get("block_size", loaded.fluid.max_k)),
        min_block=int(d.get("min_block", 1)),
        threshold=float(d.get("threshold", 0.9)),
        eos_token_ids=eos,
    )
    kw.update(overrides)
    kw["min_block"] = min(kw["min_block"], kw["block_size"])
    return DecodeConfig(**kw)


def tokens_per_forward(
    path: str, adapter_dir: str, samples: list[dict], batch_size: int = 8, progress: bool = True
) -> dict:
    """Decode ``samples``' prompts elastically (batched) with base + adapter, and with AR in the
    same run: the samples' stored ``answer_ids`` were made by the kernels of their day, and a
    kernel change that moves a float sum can flip a near-tie of the greedy choice, so only AR
    decoded now is the reference. Returns tokens/forward overall and per kind, and how many
    sequences differ from AR."""
    from tqdm import tqdm

    import fluid_rt
    from fluid_rt.decode import Decoder

    loaded = fluid_rt.load_model(path, adapter=adapter_dir)
    budget = max(len(s["answer_ids"]) for s in samples)
    cfg = decode_config(loaded, budget)
    ar_cfg = dataclasses.replace(cfg, mode="ar")
    dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=loaded.fluid.mask_token_id)
    toks, fwds = defaultdict(int), defaultdict(int)
    mismatches = 0
    for start in tqdm(range(0, len(samples), batch_size), desc="report", disable=not progress):
        chunk = samples[start : start + batch_size]
        prompts = [s["prompt_ids"] for s in chunk]
        gens, _ = dec.generate(prompts, cfg)
        refs, _ = dec.generate(prompts, ar_cfg)
        for s, g, ref in zip(chunk, gens, refs):
            mismatches += g.tokens != ref.tokens
            toks[s.get("kind", "?")] += len(g.tokens)
            fwds[s.get("kind", "?")] += g.forwards
    per_kind = {k: round(toks[k] / max(fwds[k], 1), 3) for k in sorted(toks)}
    return {
        "tokens_per_forward": round(sum(toks.values()) / max(sum(fwds.values()), 1), 3),
        "tokens_per_forward_by_kind": per_kind,
        "prompts": len(samples),
        "sequences_differing_from_ar": mismatches,
        "decode": {"block_size": cfg.block_size, "min_block": cfg.min_block, "threshold": cfg.threshold},
    }
