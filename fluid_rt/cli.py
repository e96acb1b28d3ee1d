"""The ``fluid-rt`` command: ``generate`` text or token ids, and run the ``bench`` scripts.

A thin client of the Python API (``fluid_rt.loader.load_model`` + ``fluid_rt.decode.Decoder``):
nothing here is impossible from Python. What the CLI adds is checking: flags, request files and
output paths are validated before the model loads, and every request before any is decoded, so a
mistake costs a one-line error (``fluid-rt: error: ...``, exit status 2) and never a finished run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import runpy
import signal
import sys
import warnings
from collections import OrderedDict

import torch

from fluid_rt.config import is_int
from fluid_rt.decode import DecodeConfig, Decoder, Generation
from fluid_rt.loader import DTYPES, WEIGHTS, load_model, resolve_dtype_device
from fluid_rt.policies import COMMITS, HORIZONS

# Keys of a --input request line that are decode parameters (everything else is rejected).
REQUEST_KEYS = {"prompt", "prompt_ids", "chat", "mode", "max_new_tokens", "block_size", "min_block",
                "threshold", "remask", "horizon", "commit", "eos_token_ids"}
PROMPT_KEYS = ("prompt", "prompt_ids", "chat")
CHOICES = {"mode": ("elastic", "ar"), "horizon": HORIZONS, "commit": COMMITS}


class CLIError(Exception):
    """A mistake in the command line or its input files: one line on stderr, exit status 2."""


# -- argument types (argparse names the flag in its error) ---------------------------------------

def _int_list(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("expected at least one integer")
    return ids


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


_positive_int, _non_negative_int = _int_at_least(1), _int_at_least(0)


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def _device(text: str) -> str:
    """cpu or an existing CUDA device, checked here: otherwise the failure comes from deep inside
    the model's first allocation, as a traceback."""
    try:
        return str(resolve_dtype_device(torch.float32, text)[1])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("device: ")) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluid-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate a continuation (elastic-horizon or greedy AR)",
                       epilog="Output: plain text, or one of --stream, --json, --show-horizon. "
                              "With --input, prompts and parameters come from the request lines "
                              "(the flags are their defaults) and results are JSON lines.")
    g.add_argument("prompt", nargs="?", help="prompt text (needs a tokenizer); or use --prompt-ids")
    g.add_argument("--model", help="HF checkpoint directory or .gguf file (default: the embedded "
                   "SmolLM2-135M-Instruct)")
    g.add_argument("--head", help="K-head file or directory (model_head.bin / .safetensors)")
    g.add_argument("--mode", choices=CHOICES["mode"],
                   help="default: elastic when the model has a K-head, else ar")
    g.add_argument("--block-size", type=_positive_int, default=16)
    g.add_argument("--min-block", type=_positive_int, default=4)
    g.add_argument("--threshold", type=_finite_float, default=None,
                   help="commit threshold: max-prob (default 0.9) or entropy in nats (default 0.3)")
    g.add_argument("--horizon", choices=CHOICES["horizon"],
                   help="default: khead when the model has a K-head, else entropy")
    g.add_argument("--commit", choices=CHOICES["commit"], default="confidence")
    g.add_argument("--no-remask", action="store_true", help="skip verification (lossy, faster)")
    g.add_argument("--max-new-tokens", type=_positive_int, default=64)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template to the "
                   "prompt text (not to --prompt-ids)")
    g.add_argument("--prompt-ids", type=_int_list, help="prompt as token ids: 1,2,3 (instead of "
                   "PROMPT)")
    g.add_argument("--mask-token-id", type=_non_negative_int,
                   help="the FLUID mask token (default: fluid.json's, else openPangu's 144208 "
                   "for a PanguEmbedded checkpoint whose vocabulary has it)")
    g.add_argument("--eos-token-id", type=_int_list, help="EOS id(s), comma-separated "
                   "(default: the model's)")
    g.add_argument("--stop-at-end-of-think", action="store_true",
                   help="also stop at the FLUID end-of-think token (openPangu models, or one "
                   "named in fluid.json)")
    g.add_argument("--dtype", choices=list(DTYPES), default="float32")
    g.add_argument("--weights", choices=list(WEIGHTS), default="quantized",
                   help="a quantized GGUF's matrices: kept in their 4-8 bit blocks on the CPU "
                   "(quantized, the default) or dequantized to --dtype at load (float)")
    g.add_argument("--device", type=_device, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda[:N] (default: cuda when a GPU is usable)")
    g.add_argument("--threads", type=_positive_int, help="CPU threads (torch.set_num_threads)")
    g.add_argument("--stream", action="store_true", help="print text as blocks commit")
    g.add_argument("--json", action="store_true", help="print tokens, text and stats as JSON")
    g.add_argument("--show-horizon", action="store_true",
                   help="colour the text block by block (green: long K, red: short K; elastic)")
    g.add_argument("--horizon-plot", metavar="FILE.png",
                   help="plot K and tokens per block (elastic; needs matplotlib)")
    g.add_argument("--input", metavar="REQUESTS.jsonl", help="offline batch: one request a line")
    g.add_argument("--output", metavar="RESULTS.jsonl", help="results of --input, in input order "
                   "(default: stdout)")
    g.add_argument("--batch-size", type=_positive_int, help="max sequences per batch (--input; "
                   "default 16)")

    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    b.add_argument("name", help="entropy | attention | commit | model | decode")
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    from fluid_rt.adapt import cli as adapt_cli  # fluid-rt adapt: its options live there

    adapt_cli.register(sub)
    return parser


# -- checks before the model loads ---------------------------------------------------------------

def _check_text(text: str, what: str) -> None:
    # A command-line argument that is not UTF-8 reaches Python as lone surrogates (and a JSON
    # string may spell one as \ud800): the tokenizer would fail on them with a TypeError.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise CLIError(f"{what} is not valid UTF-8 text (at character {err.start + 1})") from None


def _check_writable(path: str, flag: str) -> None:
    """Refuse an output path that cannot be written now, before any decoding is spent on it."""
    if os.path.isdir(path):
        raise CLIError(f"{flag} {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"{flag} {path}: no such directory {parent}")
    if not os.access(path if os.path.exists(path) else parent, os.W_OK):
        raise CLIError(f"{flag} {path}: not writable")


def _check_plot_path(path: str) -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise CLIError("--horizon-plot needs matplotlib (pip install matplotlib)")
    _check_writable(path, "--horizon-plot")
    ext = os.path.splitext(path)[1][1:].lower()
    if ext:  # savefig picks the format from the extension (png when there is none)
        from matplotlib.backend_bases import FigureCanvasBase

        formats = FigureCanvasBase.get_supported_filetypes()
        if ext not in formats:
            raise CLIError(f"--horizon-plot {path}: matplotlib cannot write .{ext} files "
                           f"(it can: {', '.join(sorted(formats))})")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_args(args) -> None:
    """Flag combinations that mean nothing, and paths that cannot work, refused before loading."""
    if args.input:
        unused = [flag for flag, given in (
            ("PROMPT", args.prompt is not None), ("--prompt-ids", args.prompt_ids is not None),
            ("--stream", args.stream), ("--show-horizon", args.show_horizon),
            ("--horizon-plot", args.horizon_plot is not None)) if given]
        if unused:
            raise CLIError(f"{', '.join(unused)}: {'does' if len(unused) == 1 else 'do'} not apply "
                           "to --input (each request line gives its prompt, and results are JSON "
                           "lines)")
        if args.output is not None:
            if _same_file(args.input, args.output):
                raise CLIError(f"--output {args.output} is the --input file: it would overwrite "
                               "the requests")
            _check_writable(args.output, "--output")
        return
    for flag, value in (("--output", args.output), ("--batch-size", args.batch_size)):
        if value is not None:
            raise CLIError(f"{flag} only applies to --input")
    formats = [flag for flag, on in (("--stream", args.stream), ("--json", args.json),
                                     ("--show-horizon", args.show_horizon)) if on]
    if len(formats) > 1:
        raise CLIError(f"{' and '.join(formats)}: choose one output format")
    if args.prompt is not None and args.prompt_ids is not None:
        raise CLIError("give a PROMPT or --prompt-ids, not both")
    if args.prompt is None and args.prompt_ids is None:
        raise CLIError("give a PROMPT or --prompt-ids")
    if args.chat and args.prompt_ids is not None:
        raise CLIError("--chat applies the chat template to PROMPT text, not to --prompt-ids")
    if args.prompt is not None:
        _check_text(args.prompt, "PROMPT")
    if args.min_block > args.block_size:
        raise CLIError(f"--min-block ({args.min_block}) must be <= --block-size "
                       f"({args.block_size})")
    if args.horizon_plot is not None:
        _check_plot_path(args.horizon_plot)


# -- --input request files -----------------------------------------------------------------------

def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _check_value(key: str, value) -> None:
    """One request value has the JSON type its key needs: nothing is coerced (bool("false") is
    True, int(2.9) is 2, list("486") is three ids)."""
    if key == "prompt":
        if not isinstance(value, str):
            raise ValueError(f"prompt: expected a string, got {_show(value)}")
        _check_text(value, "prompt")
    elif key in ("chat", "remask"):
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {_show(value)}")
    elif key in CHOICES:
        if value not in CHOICES[key]:
            raise ValueError(f"{key}: expected one of {', '.join(CHOICES[key])}, got "
                             f"{_show(value)}")
    elif key in ("max_new_tokens", "block_size", "min_block"):
        if not is_int(value) or value < 1:
            raise ValueError(f"{key}: expected an integer >= 1, got {_show(value)}")
    elif key == "threshold":
        if not (is_int(value) or isinstance(value, float)) or not math.isfinite(value):
            raise ValueError(f"threshold: expected a finite number, got {_show(value)}")
    elif key == "prompt_ids":
        if not isinstance(value, list) or not value or not all(map(is_int, value)):
            raise ValueError(f"prompt_ids: expected a non-empty list of integers, got "
                             f"{_show(value)}")
    elif key == "eos_token_ids":  # an int, or a list of ints where [] means: no EOS at all
        if not is_int(value) and not (isinstance(value, list) and all(map(is_int, value))):
            raise ValueError(f"eos_token_ids: expected an integer or a list of integers, got "
                             f"{_show(value)}")


def _check_request(req) -> dict:
    if not isinstance(req, dict):
        kind = "null" if req is None else {list: "a list", str: "a string", bool: "a boolean"}.get(
            type(req), "a number")
        raise ValueError(f"expected a JSON object, got {kind}")
    unknown = set(req) - REQUEST_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} (known: "
                         f"{', '.join(sorted(REQUEST_KEYS))})")
    for key, value in req.items():
        _check_value(key, value)
    if "prompt" in req and "prompt_ids" in req:
        raise ValueError("give prompt or prompt_ids, not both")
    if "prompt" not in req and "prompt_ids" not in req:
        raise ValueError("a request needs prompt (text) or prompt_ids")
    if req.get("chat") and "prompt_ids" in req:
        raise ValueError("chat: the chat template applies to prompt text, not to prompt_ids")
    return req


class _BadValue(ValueError):
    """Valid JSON syntax that a request still cannot hold."""


def _reject_constant(name: str):
    raise _BadValue(f"{name} is not a JSON number")  # Python's json accepts NaN and Infinity


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = next((k for k in keys if keys.count(k) > 1), None)
    if dup is not None:  # json.loads would keep the last one silently
        raise _BadValue(f"key {dup!r} appears twice")
    return dict(pairs)


def _read_requests(path: str) -> list[tuple[int, dict]]:
    """(line number, request) for each non-blank line of a JSONL file, all checked for types now,
    so a bad line late in the file fails before any decoding."""
    requests = []
    try:
        with open(path, "rb") as f:  # bytes: a line that is not UTF-8 is reported by number
            for n, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise CLIError(f"{path}:{n}: not UTF-8 text (byte 0x{raw[err.start]:02x} at "
                                   f"column {err.start + 1})") from None
                if n == 1:
                    line = line.removeprefix("\ufeff")  # a byte-order mark some editors write
                if not line.strip():
                    continue
                try:
                    req = json.loads(line, parse_constant=_reject_constant,
                                     object_pairs_hook=_no_duplicate_keys)
                except _BadValue as err:
                    raise CLIError(f"{path}:{n}: {err}") from None
                except (ValueError, RecursionError) as err:
                    raise CLIError(f"{path}:{n}: not JSON ({err})") from None
                try:
                    requests.append((n, _check_request(req)))
                except ValueError as err:
                    raise CLIError(f"{path}:{n}: {err}") from None
    except OSError as err:
        raise CLIError(f"--input {path}: cannot read it ({err.strerror or err})") from None
    return requests


# -- loading -------------------------------------------------------------------------------------

# The Python API's words in messages that reach a CLI user, and the flags that say the same.
# (A missing or out-of-vocabulary mask token never reaches them: _check_decode says it first.)
_API_WORDS = [("horizon 'khead'", "--horizon khead"),
              ("use horizon 'entropy' or 'fixed'", "use --horizon entropy or fixed")]


def _cli_words(message: str) -> str:
    for api, flag in _API_WORDS:
        message = message.replace(api, flag)
    return re.sub(r"^(mask_token_id|device|dtype): ",
                  lambda m: "--" + m[1].replace("_", "-") + ": ", message)


def _load(args):
    """The model. The loader warns when the default or fluid.json mask id lies outside the
    vocabulary; that only matters to elastic decoding, whose error says it (``_check_decode``),
    so it is not printed on every AR run. Other warnings are printed as one line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # the loader's (not deprecation noise)
        loaded = load_model(args.model, head=args.head, dtype=args.dtype,
                            device=args.device, mask_token_id=args.mask_token_id,
                            weights=args.weights)
    for w in caught:
        if "mask_token_id" not in str(w.message):
            print(f"fluid-rt: warning: {_cli_words(str(w.message))}", file=sys.stderr)
    return loaded


def _end_of_think_id(loaded) -> int:
    """The id --stop-at-end-of-think stops at: fluid.json's, or openPangu's [unused17] (45982) for
    a PanguEmbedded checkpoint (the loader gives other vocabularies no default: there that id is
    an ordinary token, as in SmolLM2)."""
    eot = loaded.fluid.end_of_think_token_id if loaded.fluid is not None else None
    if eot is None:
        raise CLIError("--stop-at-end-of-think: this model has no end-of-think id (a FLUID "
                       "checkpoint names it in fluid.json: end_of_think_token_id)")
    return eot


def _decoder(loaded) -> Decoder:
    mask = loaded.fluid.mask_token_id if loaded.fluid is not None else None
    if mask is not None and not 0 <= mask < loaded.config.vocab_size:
        mask = None  # the default openPangu mask id does not exist in a smaller vocabulary
    return Decoder(loaded.model, khead=loaded.khead, mask_token_id=mask)


# -- requests: config, prompt ids, and what Decoder.generate would refuse --------------------------

def _decode_config(args, loaded, eot: int | None, o: dict | None = None) -> DecodeConfig:
    """The flags, overridden by a request's checked values ``o``."""
    o = o or {}
    has_head = loaded.khead is not None
    mode = o.get("mode", args.mode) or ("elastic" if has_head else "ar")
    horizon = o.get("horizon", args.horizon) or ("khead" if has_head else "entropy")
    commit = o.get("commit", args.commit)
    threshold = o.get("threshold", args.threshold)
    if threshold is None:
        threshold = 0.3 if commit == "entropy" else 0.9
    if "eos_token_ids" in o:  # present, even as [], it replaces the model's EOS ids
        eos = o["eos_token_ids"]
        eos = [eos] if isinstance(eos, int) else list(eos)
    elif args.eos_token_id is not None:
        eos = list(args.eos_token_id)
    else:
        eos = list(loaded.config.eos_token_ids)
    if eot is not None:
        eos.append(eot)
    return DecodeConfig(
        mode=mode, max_new_tokens=o.get("max_new_tokens", args.max_new_tokens),
        block_size=o.get("block_size", args.block_size),
        min_block=o.get("min_block", args.min_block), threshold=float(threshold),
        remask=o.get("remask", not args.no_remask), horizon=horizon, commit=commit,
        eos_token_ids=tuple(eos))


def _prompt_ids(loaded, text: str | None, ids: list[int] | None, chat: bool) -> list[int]:
    if ids is not None:
        return list(ids)
    tok = loaded.tokenizer
    if tok is None:
        raise CLIError("this model has no tokenizer: give the prompt as token ids (--prompt-ids, "
                       "or prompt_ids in --input)")
    if chat:
        if not tok.has_chat_template:
            raise CLIError("chat: this model has no chat template")
        import jinja2

        try:
            text = tok.apply_chat_template([{"role": "user", "content": text}],
                                           add_generation_prompt=True)
        except jinja2.TemplateError as err:
            raise CLIError(f"chat: the model's chat template failed: {err}") from None
        return tok.encode(text, add_special_tokens=False)
    return tok.encode(text, add_special_tokens=True)


def _check_decode(ids: list[int], cfg: DecodeConfig, loaded, decoder: Decoder) -> None:
    """What Decoder.generate would refuse, in flag words, before any request is decoded. A
    missing mask token gets its own message: the decoder cannot tell why there is none."""
    if cfg.mode == "elastic" and decoder.mask_token_id is None:
        mask = loaded.fluid.mask_token_id if loaded.fluid is not None else None
        if mask is None:  # none named, or the loader dropped one (a model without a K-head)
            why = "this model has none (none named, or one outside its vocabulary)"
        else:  # _decoder dropped it
            why = (f"this model's mask id {mask} (default / fluid.json) is outside its "
                   f"vocabulary of {loaded.config.vocab_size}")
        raise CLIError(f"elastic decoding needs a FLUID mask token, and {why}: pass "
                       "--mask-token-id ID, or --mode ar")
    try:
        decoder.check([ids], cfg)  # token ids, and the prompt's fit in the model's context
    except ValueError as err:
        raise CLIError(_cli_words(str(err))) from None


# -- output --------------------------------------------------------------------------------------

def _result_json(g: Generation, tokenizer) -> dict:
    out = {"tokens": g.tokens, "stop_reason": g.stop_reason, "forwards": g.forwards,
           "tokens_per_forward": round(g.tokens_per_forward, 4), "trace": g.trace}
    if tokenizer is not None:
        out["text"] = tokenizer.decode(g.tokens)
    return out


def _coloured(g: Generation, tokenizer) -> str:
    """The text block by block, coloured by K: green = sprint (long K), red = downshift.

    Each block's piece is the text it completes (an incremental decoder), so a character whose
    bytes span two blocks shows whole, in the colour of the block that finishes it; decoding each
    block alone would print U+FFFD halves."""
    colours = ["\033[31m", "\033[33m", "\033[32m", "\033[36m"]  # red, yellow, green, cyan
    k_max = max((b["K"] for b in g.trace), default=1)
    stream = tokenizer.decode_stream() if tokenizer is not None else None
    pieces, pos = [], 0
    for b in g.trace:
        ids = g.tokens[pos : pos + b["committed"]]
        pos += b["committed"]
        text = (stream.push(ids) if stream else " ".join(map(str, ids)) + " ") if ids else ""
        if text:
            c = colours[min(len(colours) - 1, (b["K"] * len(colours)) // (k_max + 1))]
            pieces.append(f"{c}{text}\033[0m")
    rest = g.tokens[pos:]
    if stream is not None:
        pieces.append(stream.push(rest) + stream.flush())
    elif rest:
        pieces.append(" ".join(map(str, rest)))
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
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)


# -- generate ------------------------------------------------------------------------------------

def cmd_generate(args) -> int:
    _check_args(args)
    requests = _read_requests(args.input) if args.input else None
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = _load(args)
    decoder = _decoder(loaded)
    eot = _end_of_think_id(loaded) if args.stop_at_end_of_think else None

    if requests is not None:
        return _generate_batch(args, loaded, decoder, requests, eot)
    cfg = _decode_config(args, loaded, eot)
    ids = _prompt_ids(loaded, args.prompt, args.prompt_ids, args.chat)
    _check_decode(ids, cfg, loaded, decoder)
    for flag in ("--show-horizon", "--horizon-plot"):
        if getattr(args, flag[2:].replace("-", "_")) and cfg.mode != "elastic":
            raise CLIError(f"{flag}: mode {cfg.mode} has no horizons (it needs --mode elastic)")
    tok = loaded.tokenizer
    on_commit = stream = None
    if args.stream:
        stream = tok.decode_stream() if tok is not None else None

        def on_commit(_row, new_ids):
            text = stream.push(new_ids) if stream else " ".join(map(str, new_ids)) + " "
            print(text, end="", flush=True)

    (g,), stats = decoder.generate([ids], cfg, on_commit=on_commit)
    if args.json:
        out = _result_json(g, tok)
        out.update(wall_s=round(stats.wall_s, 4), prefill_s=round(stats.prefill_s, 4),
                   tokens_per_s=round(stats.tokens_per_s, 2), mode=cfg.mode)
        print(json.dumps(out))
    elif args.stream:
        print(stream.flush() if stream else "")  # text held back by a cut-off last character
    elif args.show_horizon:
        print(_coloured(g, tok))
    else:
        print(tok.decode(g.tokens) if tok is not None else " ".join(map(str, g.tokens)))
    if not args.json:
        print(f"[{len(g.tokens)} tokens, {g.forwards} forwards, "
              f"{g.tokens_per_forward:.2f} tokens/forward, {stats.tokens_per_s:.1f} tokens/s, "
              f"mode {cfg.mode}]", file=sys.stderr)
    if args.horizon_plot:
        # After the text: a plot that still fails to write (disk full...) must not lose it.
        try:
            plot_horizon(g, args.horizon_plot)
        except (OSError, ValueError, RuntimeError) as err:
            print(f"fluid-rt: error: --horizon-plot {args.horizon_plot}: cannot write it ({err})",
                  file=sys.stderr)
            return 1
    return 0


def _generate_batch(args, loaded, decoder: Decoder, requests, eot) -> int:
    """--input/--output: requests decoded in batches of equal parameters, results in input order.
    Every request is turned into (config, prompt ids) and checked before the first batch runs."""
    groups: OrderedDict = OrderedDict()
    for i, (n, req) in enumerate(requests):
        try:
            cfg = _decode_config(args, loaded, eot,
                                 {k: v for k, v in req.items() if k not in PROMPT_KEYS})
            # --chat is the default of text requests; prompt_ids lines have no text to template
            chat = req.get("chat", args.chat and "prompt" in req)
            ids = _prompt_ids(loaded, req.get("prompt"), req.get("prompt_ids"), chat)
            _check_decode(ids, cfg, loaded, decoder)
        except (CLIError, ValueError) as err:
            raise CLIError(f"{args.input}:{n}: {err}") from None
        groups.setdefault(cfg, []).append((i, ids))
    batch_size = args.batch_size or 16
    results: list[dict | None] = [None] * len(requests)
    for cfg, items in groups.items():
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            try:
                gens, stats = decoder.generate([ids for _, ids in chunk], cfg)
            except FloatingPointError as err:  # its "prompt i" counts within this batch
                lines = ", ".join(str(requests[i][0]) for i, _ in chunk)
                raise FloatingPointError(f"{args.input}, the batch of lines {lines}: "
                                         f"{err}") from None
            for (i, _), g in zip(chunk, gens):
                r = _result_json(g, loaded.tokenizer)
                r.update(batch_wall_s=round(stats.wall_s, 4), batch_size=len(chunk))
                results[i] = r
    lines = "".join(json.dumps(r) + "\n" for r in results)
    if args.output is None:
        sys.stdout.write(lines)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(lines)
    except OSError as err:
        # Checked before decoding, but it can still fail (disk full...): keep the results.
        print(f"fluid-rt: error: --output {args.output}: cannot write it ({err.strerror or err}); "
              "the results follow on stdout", file=sys.stderr)
        sys.stdout.write(lines)
        return 1
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


def _stdout_gone() -> int:
    """The reader of stdout went away (``fluid-rt generate --stream ... | head``): exit quietly
    with the status of a Unix tool killed by SIGPIPE. stdout is pointed at /dev/null first, or
    the interpreter's last flush at exit would raise (and print) the same error again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout is no file (captured)
        pass
    return 128 + getattr(signal, "SIGPIPE", 13)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return cmd_generate(args)
        if args.command == "adapt":
            from fluid_rt.adapt import cli as adapt_cli

            return adapt_cli.run_command(args)
        return cmd_bench(args)
    except CLIError as err:
        print(f"fluid-rt: error: {err}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as err:
        print(f"fluid-rt: error: {_cli_words(str(err))}", file=sys.stderr)
        return 2
    except FloatingPointError as err:  # the model's numbers broke down (NaN logits): no usage error
        print(f"fluid-rt: error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return _stdout_gone()
    except KeyboardInterrupt:
        return 128 + signal.SIGINT  # 130, like a shell reports Ctrl-C, without a traceback


if __name__ == "__main__":
    sys.exit(main())
