"""The ``fluid-rt adapt`` pipeline: data, Stage I, Stage II, the adapter directory, the report."""

from __future__ import annotations

import os
import time

import torch

# Special tokens a chat never needs, in order of preference, for the mask token: SmolLM2's
# vocabulary has no unused entry, and the mask id must be one the base model never emits (a
# committed mask id would be read as a mask by later forwards). "<empty_output>" marks empty
# Jupyter outputs in SmolLM2's pre-training code data; an instruction-tuned chat never produces it.
MASK_CANDIDATES = ("<empty_output>", "<jupyter_script>", "<issue_closed>", "<gh_stars>")

# Measured with the shipped adapter on the int8 kernels (`bench_adapter.py`, 18 held-out prompts,
# batch 1, Zen 4): a forward's matmul cost grows with its rows past ~3 (`bench_quant.py`), and an
# elastic forward has 1 + K + block_size rows, so block 3 (0.84x AR at 1.37 tokens per forward) beat
# block 4 (0.70x at 1.42) and block 2 (0.86x at 1.29 within noise, but fewer tokens per forward).
# A threshold of 0.3 commits fewer weak drafts than 0.1 (0.76x at block 3, 1.39 tokens per forward).
DECODE_DEFAULTS = {"block_size": 3, "min_block": 1, "threshold": 0.3}


def pick_mask_token(tokenizer) -> int:
    """The mask token id for this vocabulary (ValueError when none of the candidates exists)."""
    for name in MASK_CANDIDATES:
        tid = tokenizer.token_to_id(name)
        if tid is not None:
            return tid
    raise ValueError(
        f"no mask token candidate {MASK_CANDIDATES} in this vocabulary: pass "
        "--mask-token-id (an id the base model never emits)"
    )


def load_training_base(path: str | None, need_tokenizer: bool = True):
    """(model path, ModelConfig, float32 HF-named state dict, tokenizer or None)."""
    from fluid_rt.weights.gguf import default_model_path, load_gguf

    path = path or default_model_path()
    if path.endswith(".gguf"):
        cfg, state, tok = load_gguf(path, torch.float32)
    else:
        from fluid_rt.loader import _load_dir_tokenizer
        from fluid_rt.weights import load_hf_checkpoint

        cfg, state = load_hf_checkpoint(path, torch.float32)
        tok = _load_dir_tokenizer(path)
    if tok is None and need_tokenizer:
        raise ValueError(
            f"{path}: distilling data needs the model's tokenizer and chat template "
            "(or give the data: --skip-distill, and --mask-token-id)"
        )
    return path, cfg, state, tok


def distill(path: str, data_dir: str, args) -> tuple[list[dict], list[dict]]:
    """(train, held-out) samples in ``data_dir``, generated where missing."""
    import fluid_rt
    from fluid_rt.adapt.data import generate_samples, write_prompts
    from fluid_rt.adapt.prompts import build_prompts

    os.makedirs(data_dir, exist_ok=True)
    train, held = build_prompts(seed=args.seed, extra=args.extra_prompts)
    if args.prompts:
        train = train[: args.prompts]
    loaded = fluid_rt.load_model(path, adapter=None)
    write_prompts(held, os.path.join(data_dir, "held_out_prompts.jsonl"))
    held_s = generate_samples(
        loaded, held, os.path.join(data_dir, "held_out.jsonl"), max_new_tokens=args.max_new_tokens
    )
    train_s = generate_samples(
        loaded, train, os.path.join(data_dir, "train.jsonl"), max_new_tokens=args.max_new_tokens
    )
    return train_s, held_s


def _read_data(data_dir: str) -> tuple[list[dict], list[dict]]:
    from fluid_rt.adapt.data import read_samples

    paths = [os.path.join(data_dir, n) for n in ("train.jsonl", "held_out.jsonl")]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"--skip-distill: {missing} not found")
    return read_samples(paths[0]), read_samples(paths[1])


def adapt(args) -> dict:
    from fluid_rt.adapt.trainer import TrainConfig, Trainer
    from fluid_rt.adapter import base_identity, save_adapter

    if args.threads:
        torch.set_num_threads(args.threads)
    need_tok = not (args.skip_distill and args.mask_token_id is not None)
    path, cfg, state, tok = load_training_base(args.model, need_tok)
    mask_id = args.mask_token_id if args.mask_token_id is not None else pick_mask_token(tok)
    special = tok.special_token_ids if tok is not None else frozenset(cfg.eos_token_ids)
    data_dir = os.path.join(args.out, "data")
    if args.skip_distill:
        train_s, held_s = _read_data(data_dir)
    else:
        train_s, held_s = distill(path, data_dir, args)
    tcfg = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        max_k=args.max_k,
        rank=args.rank,
        alpha=args.alpha,
        lr=args.lr,
        select_prob=args.select_prob,
        seed=args.seed,
        checkpoint_every_s=args.checkpoint_every,
        stage2_samples=args.stage2_samples,
        bf16=not args.no_bf16,
    )
    identity = {"sha256": base_identity(path), "name": os.path.basename(path)}
    trainer = Trainer(tcfg, cfg, state, train_s, mask_id, special, identity)
    del state
    if args.resume or args.finalize:
        trainer.load_checkpoint(args.out)
        print(f"checkpoint of step {trainer.step} loaded")
    t0 = time.perf_counter()
    if not args.finalize:
        trainer.run(args.out, reload=(lambda: _read_data(data_dir)[0]) if args.skip_distill else None)
    head, hist = trainer.train_khead()
    meta = trainer.describe()
    meta["decode"] = dict(DECODE_DEFAULTS, block_size=min(DECODE_DEFAULTS["block_size"], tcfg.max_k))
    meta["training"]["k_star_histogram"] = hist
    adapter_dir = os.path.join(args.out, "adapter")
    save_adapter(adapter_dir, trainer.adapter.tensors(), meta, khead=head.state_dict())
    report = {
        "adapter": adapter_dir,
        "train_s": round(time.perf_counter() - t0, 1),
        "steps": trainer.step,
        "k_star_histogram": hist,
    }
    if args.report_prompts:
        from fluid_rt.adapt.report import tokens_per_forward

        report.update(tokens_per_forward(path, adapter_dir, held_s[: args.report_prompts]))
    return report
