"""The ``fluid-rt`` command: ``generate`` text or token ids, and run the ``bench`` scripts.

A thin client of the Python API (``fluid_rt.loader.load_model`` + ``fluid_rt.decode.Decoder``):
nothing here is impossible from Python.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
from collections import OrderedDict

import torch

from fluid_rt.decode import DecodeConfig, Decoder, Generation

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Keys of a --input request line that are decode parameters (everything else is rejected).
REQUEST_KEYS = {"prompt", "prompt_ids", "chat", "mode", "max_new_tokens", "block_size", "min_block",
                "threshold", "remask", "horizon", "commit", "eos_token_ids"}


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluid-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a continuation (elastic-horizon or greedy AR)")
    g.add_argument("prompt", nargs="?", help="prompt text (needs a tokenizer); or use --prompt-ids")
    g.add_argument("--model", help="HF checkpoint directory or .gguf file (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    g.add_argument("--head", help="K-head file or directory (model_head.bin / .safetensors)")
    g.add_argument("--mode", choices=["elastic", "ar"], help="default: elastic when a K-head or "
                   "mask token is known, else ar")
    g.add_argument("--block-size", type=int, default=16)
    g.add_argument("--min-block", type=int, default=4)
    g.add_argument("--threshold", type=float, default=None,
                   help="commit threshold: max-prob (default 0.9) or entropy in nats (default 0.3)")
    g.add_argument("--horizon", choices=["khead", "entropy", "fixed"],
                   help="default: khead when the model has a K-head, else entropy")
    g.add_argument("--commit", choices=["confidence", "entropy"], default="confidence")
    g.add_argument("--no-remask", action="store_true", help="skip verification (lossy, faster)")
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template")
    g.add_argument("--prompt-ids", type=_int_list, help="prompt as token ids: 1,2,3")
    g.add_argument("--mask-token-id", type=int)
    g.add_argument("--eos-token-id", type=_int_list, help="EOS id(s), comma-separated "
                   "(default: the model's)")
    g.add_argument("--stop-at-end-of-think", action="store_true",
                   help="also stop at the FLUID end-of-think token")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--threads", type=int, help="CPU threads (torch.set_num_threads)")
    g.add_argument("--stream", action="store_true", help="print text as blocks commit")
    g.add_argument("--json", action="store_true", help="print tokens, text and stats as JSON")
    g.add_argument("--show-horizon", action="store_true",
                   help="colour the text block by block (green: long K, red: short K)")
    g.add_argument("--horizon-plot", metavar="FILE.png", help="plot K and tokens per block")
    g.add_argument("--input", metavar="REQUESTS.jsonl", help="offline batch: one request a line")
    g.add_argument("--output", metavar="RESULTS.jsonl", help="results of --input, in input order")
    g.add_argument("--batch-size", type=int, default=16, help="max sequences per batch (--input)")

    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    b.add_argument("name", help="entropy | attention | commit | model | decode")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    return parser


# -- generate ------------------------------------------------------------------------------------

def _load(args):
    from fluid_rt.loader import load_model

    return load_model(args.model, head=args.head, dtype=DTYPES[args.dtype], device=args.device,
                      mask_token_id=args.mask_token_id)


def _decode_config(args, loaded, overrides: dict | None = None) -> DecodeConfig:
    o = overrides or {}
    has_head = loaded.khead is not None
    mode = o.get("mode") or args.mode or ("elastic" if has_head else "ar")
    horizon = o.get("horizon") or args.horizon or ("khead" if has_head else "entropy")
    commit = o.get("commit") or args.commit
    threshold = o.get("threshold", args.threshold)
    if threshold is None:
        threshold = 0.3 if commit == "entropy" else 0.9
    eos = o.get("eos_token_ids") or args.eos_token_id or list(loaded.config.eos_token_ids)
    if isinstance(eos, int):
        eos = [eos]
    eos = list(eos)
    eot = loaded.fluid.end_of_think_token_id if loaded.fluid is not None else None
    if args.stop_at_end_of_think:
        if eot is None:
            raise SystemExit("fluid-rt: --stop-at-end-of-think: this model has no end-of-think id")
        eos.append(eot)
    return DecodeConfig(
        mode=mode, max_new_tokens=int(o.get("max_new_tokens", args.max_new_tokens)),
        block_size=int(o.get("block_size", args.block_size)),
        min_block=int(o.get("min_block", args.min_block)), threshold=float(threshold),
        remask=bool(o.get("remask", not args.no_remask)), horizon=horizon, commit=commit,
        eos_token_ids=tuple(int(t) for t in eos))


def _prompt_ids(loaded, text: str | None, ids: list[int] | None, chat: bool) -> list[int]:
    if ids:
        return list(ids)
    if text is None:
        raise SystemExit("fluid-rt: give a PROMPT or --prompt-ids")
    tok = loaded.tokenizer
    if tok is None:
        raise SystemExit("fluid-rt: this model has no tokenizer: pass --prompt-ids")
    if chat:
        if not tok.has_chat_template:
            raise SystemExit("fluid-rt: --chat: this model has no chat template")
        text = tok.apply_chat_template([{"role": "user", "content": text}],
                                       add_generation_prompt=True)
        return tok.encode(text, add_special_tokens=False)
    return tok.encode(text, add_special_tokens=True)


def _decoder(loaded) -> Decoder:
    mask = loaded.fluid.mask_token_id if loaded.fluid is not None else None
    if mask is not None and not 0 <= mask < loaded.config.vocab_size:
        mask = None  # the default openPangu mask id does not exist in a smaller vocabulary
    return Decoder(loaded.model, khead=loaded.khead, mask_token_id=mask)


def _result_json(g: Generation, tokenizer) -> dict:
    out = {"tokens": g.tokens, "stop_reason": g.stop_reason, "forwards": g.forwards,
           "tokens_per_forward": round(g.tokens_per_forward, 4), "trace": g.trace}
    if tokenizer is not None:
        out["text"] = tokenizer.decode(g.tokens)
    return out


def _coloured(g: Generation, tokenizer) -> str:
    """The text block by block, coloured by K: green = sprint (long K), red = downshift."""
    colours = ["\033[31m", "\033[33m", "\033[32m", "\033[36m"]  # red, yellow, green, cyan
    k_max = max((b["K"] for b in g.trace), default=1)
    pieces, pos = [], 0
    for b in g.trace:
        ids = g.tokens[pos : pos + b["committed"]]
        pos += b["committed"]
        if ids:
            c = colours[min(len(colours) - 1, (b["K"] * len(colours)) // (k_max + 1))]
            text = tokenizer.decode(ids) if tokenizer else " ".join(map(str, ids)) + " "
            pieces.append(f"{c}{text}\033[0m")
    if pos < len(g.tokens):
        rest = g.tokens[pos:]
        pieces.append(tokenizer.decode(rest) if tokenizer else " ".join(map(str, rest)))
    return "".join(pieces)


def plot_horizon(g: Generation, path: str) -> None:
    """K and tokens committed per block along the output: where decoding sprints and downshifts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    starts, pos = [], 0
    for b in g.trace:
        starts.append(pos)
        pos += b["committed"]
    fig, ax = plt.subplots(figsize=(9, 3.2))
    ax.step(starts, [b["K"] for b in g.trace], where="post", label="horizon K", color="tab:blue")
    committed = [b["committed"] for b in g.trace]
    ax.bar(starts, committed, width=[max(c, 1) * 0.95 for c in committed], align="edge",
           alpha=0.5, label="tokens committed", color="tab:green")
    miss = [s for s, b in zip(starts, g.trace) if b["mismatch"] is not None]
    ax.plot(miss, [0.3] * len(miss), "rx", label="mismatch")
    ax.set_xlabel("output token index at block start")
    ax.set_ylabel("tokens")
    ax.set_title(f"elastic horizon: {len(g.tokens)} tokens in {g.forwards} forwards")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_generate(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = _load(args)
    decoder = _decoder(loaded)
    if args.input:
        return _generate_batch(args, loaded, decoder)
    cfg = _decode_config(args, loaded)
    ids = _prompt_ids(loaded, args.prompt, args.prompt_ids, args.chat)
    tok = loaded.tokenizer
    on_commit = None
    if args.stream and not args.json:
        stream = tok.decode_stream() if tok is not None else None

        def on_commit(_row, new_ids):
            text = stream.push(new_ids) if stream else " ".join(map(str, new_ids)) + " "
            print(text, end="", flush=True)

    (g,), stats = decoder.generate([ids], cfg, on_commit=on_commit)
    if args.horizon_plot:
        plot_horizon(g, args.horizon_plot)
    if args.json:
        out = _result_json(g, tok)
        out.update(wall_s=round(stats.wall_s, 4), prefill_s=round(stats.prefill_s, 4),
                   tokens_per_s=round(stats.tokens_per_s, 2), mode=cfg.mode)
        print(json.dumps(out))
    elif args.stream:
        print()
    elif args.show_horizon and cfg.mode == "elastic":
        print(_coloured(g, tok))
    else:
        print(tok.decode(g.tokens) if tok is not None else " ".join(map(str, g.tokens)))
    if not args.json:
        print(f"[{len(g.tokens)} tokens, {g.forwards} forwards, "
              f"{g.tokens_per_forward:.2f} tokens/forward, {stats.tokens_per_s:.1f} tokens/s, "
              f"mode {cfg.mode}]", file=sys.stderr)
    return 0


def _generate_batch(args, loaded, decoder: Decoder) -> int:
    """--input/--output: requests decoded in batches of equal parameters, results in input order."""
    requests = []
    with open(args.input) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                req = json.loads(line)
            except json.JSONDecodeError as err:
                raise SystemExit(f"fluid-rt: {args.input}:{n}: not JSON ({err})") from None
            unknown = set(req) - REQUEST_KEYS
            if not isinstance(req, dict) or unknown:
                raise SystemExit(f"fluid-rt: {args.input}:{n}: unknown keys {sorted(unknown)}")
            requests.append(req)
    groups: OrderedDict = OrderedDict()
    for i, req in enumerate(requests):
        params = {k: v for k, v in req.items() if k not in ("prompt", "prompt_ids", "chat")}
        cfg = _decode_config(args, loaded, params)
        ids = _prompt_ids(loaded, req.get("prompt"), req.get("prompt_ids"),
                          bool(req.get("chat", args.chat)))
        groups.setdefault(cfg, []).append((i, ids))
    results: list[dict | None] = [None] * len(requests)
    for cfg, items in groups.items():
        for start in range(0, len(items), args.batch_size):
            chunk = items[start : start + args.batch_size]
            gens, stats = decoder.generate([ids for _, ids in chunk], cfg)
            for (i, _), g in zip(chunk, gens):
                r = _result_json(g, loaded.tokenizer)
                r.update(batch_wall_s=round(stats.wall_s, 4), batch_size=len(chunk))
                results[i] = r
    out = open(args.output, "w") if args.output else sys.stdout
    try:
        for r in results:
            out.write(json.dumps(r) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


# -- bench ---------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    """Benchmarks are scripts in the source tree's benchmarks/ folder (not installed)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for root in (os.getcwd(), here):
        script = os.path.join(root, "benchmarks", f"bench_{args.name}.py")
        if os.path.isfile(script):
            sys.argv = [script, *args.args]
            sys.path.insert(0, os.path.dirname(script))  # the scripts import benchmarks/common.py
            runpy.run_path(script, run_name="__main__")
            return 0
    raise SystemExit(f"fluid-rt bench: no benchmarks/bench_{args.name}.py here or next to the "
                     "package: run it from a source checkout of fluid_rt")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return cmd_generate(args)
        return cmd_bench(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"fluid-rt: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
