"""Self-distilled training data: the base model's own greedy answers to the prompt set.

Drafts are judged against the base model's verify pass, so the targets the adapter learns are the
tokens that model itself would emit: its greedy continuations, generated with fluid_rt's own AR
decoder (batched). A sample is ``{"kind", "prompt", "prompt_ids", "answer_ids"}``, one JSON object
per line (JSONL), written as batches finish so that an interrupted run keeps what it made and
resumes after it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from fluid_rt.adapt.prompts import Prompt


def chat_ids(tokenizer, text: str) -> list[int]:
    """The prompt ids of a one-turn chat (the model's template, generation prompt added), as the
    CLI's ``--chat`` builds them."""
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    return tokenizer.encode(rendered, add_special_tokens=False)


def read_samples(path: str) -> list[dict]:
    """The samples of a JSONL file (ValueError naming the line for a corrupt one)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                sample = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not a JSON sample ({err})") from None
            if not {"prompt_ids", "answer_ids"} <= set(sample):
                raise ValueError(f"{path}:{n}: a sample needs prompt_ids and answer_ids")
            out.append(sample)
    return out


def generate_samples(
    loaded,
    prompts: Sequence[Prompt],
    out_path: str,
    *,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """Greedy answers of ``loaded`` (a ``fluid_rt.LoadedModel``) to ``prompts``, appended to
    ``out_path``; prompts already there (by text) are skipped, so a stopped run resumes."""
    from tqdm import tqdm

    from fluid_rt.decode import DecodeConfig, Decoder

    done = {s["prompt"] for s in read_samples(out_path)} if os.path.exists(out_path) else set()
    todo = [p for p in prompts if p.text not in done]
    tok = loaded.tokenizer
    eos = tuple(t for t in (tok.eos_token_id,) if t is not None)
    cfg = DecodeConfig(mode="ar", max_new_tokens=max_new_tokens, eos_token_ids=eos)
    decoder = Decoder(loaded.model)
    bar = tqdm(total=len(todo), desc="distill", unit="prompt", disable=not progress)
    with open(out_path, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            ids = [chat_ids(tok, p.text) for p in batch]
            gens, stats = decoder.generate(ids, cfg)
            f.writelines(
                json.dumps({"kind": p.kind, "prompt": p.text, "prompt_ids": pid, "answer_ids": g.tokens})
                + "\n"
                for p, pid, g in zip(batch, ids, gens)
            )
            f.flush()
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{stats.tokens_per_s:.0f}")
    bar.close()
    return read_samples(out_path)


def write_prompts(prompts: Iterable[Prompt], path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"kind": p.kind, "prompt": p.text}) + "\n" for p in prompts)


def main(argv=None) -> None:
    """``python -m fluid_rt.adapt.data OUT_DIR [--max-new-tokens N] [--limit N]``: distill the
    training and held-out sets of ``build_prompts`` with the embedded base model."""
    import argparse

    import fluid_rt
    from fluid_rt.adapt.prompts import build_prompts

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="at most N training prompts")
    ap.add_argument("--held-out", type=int, default=None, help="at most N held-out prompts")
    ap.add_argument("--extra-prompts", action="store_true", help="add the second round of prompts")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train, held = build_prompts(extra=args.extra_prompts)
    if args.limit:
        train = train[: args.limit]
    if args.held_out is not None:
        held = held[: args.held_out]
    loaded = fluid_rt.load_model(args.model, adapter=None)
    write_prompts(held, os.path.join(args.out, "held_out_prompts.jsonl"))
    generate_samples(
        loaded,
        held,
        os.path.join(args.out, "held_out.jsonl"),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    generate_samples(
        loaded,
        train,
        os.path.join(args.out, "train.jsonl"),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )


if __name__ == "__main__":
    main()
