"""The fluid-rt command: generate text or token ids, and run the bench scripts.

A thin client of the Python API (``fluid_rt.loader.load_model`` + ``fluid_rt.decode.Decoder``):
nothing here is impossible from Python. What the CLI adds is checking: flags, request files and
output paths are validated before the model loads, and every request before any is decoded, so a
mistake costs a one-line error (``fluid-rt: error: ...``, exit status 2) and never a finished run.
Decode parameters are ``DecodeConfig`` fields, checked and defaulted there: the flags and the
``--input`` request keys are derived from them.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import math
import os
import re
import runpy
import signal
import sys
import warnings

import torch

from fluid_rt.adapt import cli as adapt_cli
from fluid_rt.decode import DecodeConfig, Decoder, Generation
from fluid_rt.decode.config import FIELDS, MODES, default_of
from fluid_rt.horizon_view import coloured, plot_horizon
from fluid_rt.loader import DTYPES, WEIGHTS, load_model, resolve_dtype_device
from fluid_rt.policies import COMMITS, HORIZONS
from fluid_rt.request_file import (
    PROMPT_KEYS,
    RequestError,
    check_text,
    decode_fields,
    read_requests,
)

BENCH_DIR = "benchmarks"


class CLIError(Exception):
    """A mistake in the command line or its input files: one line on stderr, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with its usage errors as one line ``fluid-rt: error: ...`` (exit status 2), the
    form of every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"fluid-rt: error: {message}\n")


# -- argument types (argparse names the flag in its error) ---------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
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


# -- the parser ----------------------------------------------------------------------------------


def _add_decode_flags(g) -> None:
    """The flags that set ``DecodeConfig`` fields (None when not given: the config's default)."""
    d = default_of
    g.add_argument("--mode", choices=MODES, help="default: elastic when the model has a K-head, else ar")
    g.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        help=f"tokens to generate at most (default: {d('max_new_tokens')})",
    )
    g.add_argument(
        "--block-size",
        type=_positive_int,
        help=f"the largest horizon K (default: the model adapter's, else {d('block_size')})",
    )
    g.add_argument(
        "--min-block",
        type=_positive_int,
        help=f"the smallest horizon K (default: the model adapter's, else {d('min_block')})",
    )
    g.add_argument(
        "--horizon",
        choices=HORIZONS,
        help="how K is chosen (default: khead when the model has a K-head, else entropy)",
    )
    g.add_argument(
        "--entropy-low",
        type=_finite_float,
        help="entropy horizon: at or below this "
        f"entropy (nats) K is the block size (default: {d('entropy_low')})",
    )
    g.add_argument(
        "--entropy-high",
        type=_finite_float,
        help="entropy horizon: at or above this "
        f"entropy (nats) K is the min block (default: {d('entropy_high')})",
    )
    g.add_argument(
        "--commit", choices=COMMITS, help=f"which drafted tokens are kept (default: {d('commit')})"
    )
    g.add_argument(
        "--threshold",
        type=_finite_float,
        help="commit threshold: a max-prob in [0, 1] (default: the model adapter's, else 0.9), "
        "or with --commit entropy an entropy in nats (default 0.3)",
    )
    g.add_argument("--no-remask", action="store_true", help="skip verification (lossy, faster)")
    g.add_argument("--eos-token-id", type=_int_list, help="EOS id(s), comma-separated (default: the model's)")
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        help="do not stop at EOS: always generate --max-new-tokens tokens",
    )
    g.add_argument(
        "--stop-at-end-of-think",
        action="store_true",
        help="also stop at the FLUID end-of-think token (openPangu models, or one named in fluid.json)",
    )


def _add_output_flags(g) -> None:
    g.add_argument("--stream", action="store_true", help="print text as blocks commit")
    g.add_argument("--json", action="store_true", help="print tokens, text and stats as JSON")
    g.add_argument(
        "--show-horizon",
        action="store_true",
        help="colour the text block by block by its horizon K: red (shortest), "
        "yellow, green, cyan (longest); elastic mode",
    )
    g.add_argument(
        "--horizon-plot",
        metavar="FILE.png",
        help="plot K per block along the text (elastic mode; needs matplotlib)",
    )
    g.add_argument(
        "--input",
        metavar="REQUESTS.jsonl",
        help="offline batch: one request a line "
        f"(keys: {', '.join(PROMPT_KEYS + FIELDS)}); the flags are their defaults",
    )
    g.add_argument(
        "--output", metavar="RESULTS.jsonl", help="results of --input, in input order (default: stdout)"
    )
    g.add_argument("--batch-size", type=_positive_int, help="max sequences per batch (--input; default: 16)")


def _add_generate(sub) -> None:
    g = sub.add_parser(
        "generate",
        help="generate a continuation (elastic-horizon or greedy AR)",
        epilog="Output: plain text, or one of --stream, --json, --show-horizon. "
        "With --input, prompts and parameters come from the request lines "
        "(the flags are their defaults) and results are JSON lines.",
    )
    g.add_argument("prompt", nargs="?", help="prompt text (needs a tokenizer); or use --prompt-ids")
    g.add_argument("--prompt-ids", type=_int_list, help="prompt as token ids: 1,2,3 (instead of PROMPT)")
    g.add_argument(
        "--chat",
        action="store_true",
        help="apply the model's chat template to the prompt text (not to --prompt-ids)",
    )
    g.add_argument(
        "--model", help="HF checkpoint directory or .gguf file (default: the embedded SmolLM2-135M-Instruct)"
    )
    g.add_argument("--head", help="K-head file or directory (model_head.bin / .safetensors)")
    g.add_argument(
        "--mask-token-id",
        type=_non_negative_int,
        help="the FLUID mask token (default: fluid.json's, else openPangu's 144208 "
        "for a PanguEmbedded checkpoint whose vocabulary has it)",
    )
    _add_decode_flags(g)
    g.add_argument("--dtype", choices=list(DTYPES), default="float32", help="(default: %(default)s)")
    g.add_argument(
        "--weights",
        choices=list(WEIGHTS),
        default="quantized",
        help="a quantized GGUF's matrices: kept in their 4-8 bit blocks on the CPU "
        "(quantized, the default) or dequantized to --dtype at load (float)",
    )
    g.add_argument(
        "--device",
        type=_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda[:N] (default: cuda when a GPU is usable)",
    )
    g.add_argument("--threads", type=_positive_int, help="CPU threads (torch.set_num_threads)")
    _add_output_flags(g)
    g.set_defaults(run=cmd_generate)


def _bench_roots() -> list[str]:
    """Where benchmark scripts are looked for: the working directory, then the source tree the
    package was imported from (they are not installed)."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(root, BENCH_DIR) for root in dict.fromkeys((os.getcwd(), here))]


def bench_names() -> list[str]:
    names = {
        os.path.basename(p)[len("bench_") : -len(".py")]
        for root in _bench_roots()
        for p in glob.glob(os.path.join(root, "bench_*.py"))
    }
    return sorted(names)


def _add_bench(sub) -> None:
    names = bench_names()
    b = sub.add_parser("bench", help="run a benchmark script from benchmarks/ (a source checkout)")
    b.add_argument(
        "name", help=" | ".join(names) if names else "the NAME of benchmarks/bench_NAME.py (none found here)"
    )
    b.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script")
    b.set_defaults(run=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fluid-rt", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_generate(sub)
    _add_bench(sub)
    adapt_cli.register(sub)  # fluid-rt adapt: its options live there
    return parser


# -- checks before the model loads ---------------------------------------------------------------


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
            raise CLIError(
                f"--horizon-plot {path}: matplotlib cannot write .{ext} files "
                f"(it can: {', '.join(sorted(formats))})"
            )


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def _check_input_args(args) -> None:
    unused = [
        flag
        for flag, given in (
            ("PROMPT", args.prompt is not None),
            ("--prompt-ids", args.prompt_ids is not None),
            ("--stream", args.stream),
            ("--show-horizon", args.show_horizon),
            ("--horizon-plot", args.horizon_plot is not None),
        )
        if given
    ]
    if unused:
        raise CLIError(
            f"{', '.join(unused)}: {'does' if len(unused) == 1 else 'do'} not apply "
            "to --input (each request line gives its prompt, and results are JSON "
            "lines)"
        )
    if args.output is not None:
        if _same_file(args.input, args.output):
            raise CLIError(f"--output {args.output} is the --input file: it would overwrite the requests")
        _check_writable(args.output, "--output")


def _check_prompt_args(args) -> None:
    for flag, value in (("--output", args.output), ("--batch-size", args.batch_size)):
        if value is not None:
            raise CLIError(f"{flag} only applies to --input")
    formats = [
        flag
        for flag, on in (
            ("--stream", args.stream),
            ("--json", args.json),
            ("--show-horizon", args.show_horizon),
        )
        if on
    ]
    if len(formats) > 1:
        raise CLIError(f"{' and '.join(formats)}: choose one output format")
    if args.prompt is not None and args.prompt_ids is not None:
        raise CLIError("give a PROMPT or --prompt-ids, not both")
    if args.prompt is None and args.prompt_ids is None:
        raise CLIError("give a PROMPT or --prompt-ids")
    if args.chat and args.prompt_ids is not None:
        raise CLIError("--chat applies the chat template to PROMPT text, not to --prompt-ids")
    if args.prompt is not None:
        try:
            check_text(args.prompt, "PROMPT")
        except ValueError as err:
            raise CLIError(str(err)) from None
    if args.horizon_plot is not None:
        _check_plot_path(args.horizon_plot)


def _check_args(args) -> None:
    """Flag combinations that mean nothing, and paths that cannot work, refused before loading."""
    if args.ignore_eos and args.eos_token_id is not None:
        raise CLIError("--ignore-eos and --eos-token-id: choose one")
    try:
        DecodeConfig(**_flag_fields(args))
    except ValueError as err:
        raise CLIError(_flag_words(str(err))) from None
    if args.input:
        _check_input_args(args)
    else:
        _check_prompt_args(args)


# -- decode configs ------------------------------------------------------------------------------

_FLAGGED = (
    "mode",
    "max_new_tokens",
    "block_size",
    "min_block",
    "threshold",
    "horizon",
    "commit",
    "entropy_low",
    "entropy_high",
)


def _flag_fields(args) -> dict:
    """The ``DecodeConfig`` fields the flags set (EOS ids aside: their default is the model's)."""
    fields = {name: getattr(args, name) for name in _FLAGGED if getattr(args, name) is not None}
    if args.no_remask:
        fields["remask"] = False
    return fields


def _flag_words(message: str) -> str:
    """A DecodeConfig message in flag words: ``min_block`` -> ``--min-block``."""
    return re.sub(r"\b(" + "|".join(FIELDS) + r")\b", lambda m: "--" + m[1].replace("_", "-"), message)


def _decode_config(args, loaded, eot: int | None, req: dict | None = None) -> DecodeConfig:
    """The model's decode defaults (an adapter's block size, min block, threshold), overridden by
    the flags, overridden by a request's (checked) fields."""
    model_defaults = {k: v for k, v in getattr(loaded, "decode_defaults", {}).items() if k in FIELDS}
    fields = {**model_defaults, **_flag_fields(args), **decode_fields(req or {})}
    if "eos_token_ids" in fields:  # a request's, even []: it replaces the model's EOS ids
        eos = DecodeConfig(eos_token_ids=fields["eos_token_ids"]).eos_token_ids
    elif args.ignore_eos:
        eos = ()
    elif args.eos_token_id is not None:
        eos = tuple(args.eos_token_id)
    else:
        eos = tuple(loaded.config.eos_token_ids)
    fields["eos_token_ids"] = eos + ((eot,) if eot is not None else ())
    return DecodeConfig(**fields)


# -- loading -------------------------------------------------------------------------------------

# The Python API's words in messages that reach a CLI user, and the flags that say the same.
# (A missing or out-of-vocabulary mask token never reaches them: _check_decode says it first.)
_API_WORDS = [
    ("horizon 'khead'", "--horizon khead"),
    ("use horizon 'entropy' or 'fixed'", "use --horizon entropy or fixed"),
]


def _cli_words(message: str) -> str:
    for api, flag in _API_WORDS:
        message = message.replace(api, flag)
    return re.sub(r"^(mask_token_id|device|dtype): ", lambda m: "--" + m[1].replace("_", "-") + ": ", message)


def _status(text: str | None) -> None:
    """A transient status line on a terminal's stderr (loading, a long prefill); None clears it."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + (f"fluid-rt: {text}" if text else ""))
        sys.stderr.flush()


def _load(args):
    """The model. The loader warns when the default or fluid.json mask id lies outside the
    vocabulary; that only matters to elastic decoding, whose error says it (``_check_decode``),
    so it is not printed on every AR run. Other warnings are printed as one line each."""
    _status(f"loading {args.model or 'the embedded SmolLM2-135M-Instruct'} ...")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)  # the loader's (not deprecation noise)
            loaded = load_model(
                args.model,
                head=args.head,
                dtype=args.dtype,
                device=args.device,
                mask_token_id=args.mask_token_id,
                weights=args.weights,
            )
    finally:
        _status(None)
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
        raise CLIError(
            "--stop-at-end-of-think: this model has no end-of-think id (a FLUID "
            "checkpoint names it in fluid.json: end_of_think_token_id)"
        )
    return eot


def _decoder(loaded) -> Decoder:
    mask = loaded.fluid.mask_token_id if loaded.fluid is not None else None
    if mask is not None and not 0 <= mask < loaded.config.vocab_size:
        mask = None  # the default openPangu mask id does not exist in a smaller vocabulary
    return Decoder(loaded.model, khead=loaded.khead, mask_token_id=mask)


def _prompt_ids(loaded, text: str | None, ids: list[int] | None, chat: bool) -> list[int]:
    if ids is not None:
        return list(ids)
    tok = loaded.tokenizer
    if tok is None:
        raise CLIError(
            "this model has no tokenizer: give the prompt as token ids (--prompt-ids, "
            "or prompt_ids in --input)"
        )
    if not chat:
        return tok.encode(text, add_special_tokens=True)
    if not tok.has_chat_template:
        raise CLIError("chat: this model has no chat template")
    import jinja2

    try:
        text = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
    except jinja2.TemplateError as err:
        raise CLIError(f"chat: the model's chat template failed: {err}") from None
    return tok.encode(text, add_special_tokens=False)


def _check_decode(ids: list[int], cfg: DecodeConfig, loaded, decoder: Decoder) -> DecodeConfig:
    """What Decoder.generate would refuse, in flag words, before any request is decoded; returns
    ``cfg`` resolved for the model. A missing mask token gets its own message: the decoder
    cannot tell why there is none."""
    cfg = decoder.resolve(cfg)
    if cfg.mode == "elastic" and decoder.mask_token_id is None:
        mask = loaded.fluid.mask_token_id if loaded.fluid is not None else None
        if mask is None:  # none named, or the loader dropped one (a model without a K-head)
            why = "this model has none (none named, or one outside its vocabulary)"
        else:  # _decoder dropped it
            why = (
                f"this model's mask id {mask} (default / fluid.json) is outside its "
                f"vocabulary of {loaded.config.vocab_size}"
            )
        raise CLIError(
            f"elastic decoding needs a FLUID mask token, and {why}: pass --mask-token-id ID, or --mode ar"
        )
    try:
        decoder.check([ids], cfg)  # token ids, and the prompt's fit in the model's context
    except ValueError as err:
        raise CLIError(_cli_words(str(err))) from None
    return cfg


# -- generate ------------------------------------------------------------------------------------


def _result_json(g: Generation, tokenizer) -> dict:
    out = {
        "tokens": g.tokens,
        "stop_reason": g.stop_reason,
        "forwards": g.forwards,
        "tokens_per_forward": round(g.tokens_per_forward, 4),
        "trace": g.trace,
    }
    if tokenizer is not None:
        out["text"] = tokenizer.decode(g.tokens)
    return out


def _streamer(tok):
    """The on_commit callback of --stream, and the function that prints what it held back."""
    stream = tok.decode_stream() if tok is not None else None

    def on_commit(_row, new_ids):
        _status(None)
        print(stream.push(new_ids) if stream else " ".join(map(str, new_ids)) + " ", end="", flush=True)

    return on_commit, lambda: print(stream.flush() if stream else "")


def _print_result(args, g: Generation, stats, cfg: DecodeConfig, tok, flush) -> None:
    if args.json:
        out = _result_json(g, tok)
        out.update(
            wall_s=round(stats.wall_s, 4),
            prefill_s=round(stats.prefill_s, 4),
            tokens_per_s=round(stats.tokens_per_s, 2),
            mode=cfg.mode,
        )
        print(json.dumps(out))
        return
    if args.stream:
        flush()  # text held back by a cut-off last character
    elif args.show_horizon:
        print(coloured(g, tok))
    else:
        print(tok.decode(g.tokens) if tok is not None else " ".join(map(str, g.tokens)))
    print(
        f"[{len(g.tokens)} tokens, {g.forwards} forwards, "
        f"{g.tokens_per_forward:.2f} tokens/forward, {stats.tokens_per_s:.1f} tokens/s, "
        f"mode {cfg.mode}]",
        file=sys.stderr,
    )


def _write_plot(args, g: Generation, tok) -> int:
    """After the text: a plot that still fails to write (disk full...) must not lose it."""
    try:
        plot_horizon(g, args.horizon_plot, tok)
    except (OSError, ValueError, RuntimeError) as err:
        print(
            f"fluid-rt: error: --horizon-plot {args.horizon_plot}: cannot write it ({err})", file=sys.stderr
        )
        return 1
    return 0


def cmd_generate(args) -> int:
    _check_args(args)
    requests = _read_requests(args) if args.input else None
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = _load(args)
    decoder = _decoder(loaded)
    eot = _end_of_think_id(loaded) if args.stop_at_end_of_think else None
    if requests is not None:
        return _generate_batch(args, loaded, decoder, requests, eot)
    ids = _prompt_ids(loaded, args.prompt, args.prompt_ids, args.chat)
    cfg = _check_decode(ids, _decode_config(args, loaded, eot), loaded, decoder)
    for flag in ("--show-horizon", "--horizon-plot"):
        if getattr(args, flag[2:].replace("-", "_")) and cfg.mode != "elastic":
            raise CLIError(f"{flag}: mode {cfg.mode} has no horizons (it needs --mode elastic)")
    tok = loaded.tokenizer
    on_commit, flush = _streamer(tok) if args.stream else (None, None)
    if len(ids) >= 256:
        _status(f"prefill of {len(ids)} prompt tokens ...")
    try:
        (g,), stats = decoder.generate([ids], cfg, on_commit=on_commit)
    finally:
        _status(None)
    _print_result(args, g, stats, cfg, tok, flush)
    return _write_plot(args, g, tok) if args.horizon_plot else 0


def _read_requests(args) -> list[tuple[int, dict]]:
    try:
        return read_requests(args.input, _flag_fields(args))
    except RequestError as err:
        raise CLIError(str(err)) from None


def _plan_batches(args, loaded, decoder: Decoder, requests, eot) -> list[list[tuple]]:
    """Every request as (index, prompt ids, resolved config), checked, grouped into batches of
    at most --batch-size requests that the decoder can run together (``batch_key``)."""
    groups: dict = {}
    for i, (n, req) in enumerate(requests):
        try:
            cfg = _decode_config(args, loaded, eot, req)
            # --chat is the default of text requests; prompt_ids lines have no text to template
            chat = req.get("chat", args.chat and "prompt" in req)
            ids = _prompt_ids(loaded, req.get("prompt"), req.get("prompt_ids"), chat)
            cfg = _check_decode(ids, cfg, loaded, decoder)
        except (CLIError, ValueError) as err:
            raise CLIError(f"{args.input}:{n}: {err}") from None
        groups.setdefault(cfg.batch_key(), []).append((i, ids, cfg))
    size = args.batch_size or 16
    return [items[s : s + size] for items in groups.values() for s in range(0, len(items), size)]


def _run_batches(args, loaded, decoder: Decoder, requests, batches) -> list[dict]:
    from tqdm import tqdm

    results: list[dict | None] = [None] * len(requests)
    with tqdm(
        total=len(requests), unit="request", desc="fluid-rt", file=sys.stderr, disable=None, leave=False
    ) as bar:
        for chunk in batches:
            try:
                gens, stats = decoder.generate([ids for _, ids, _ in chunk], [cfg for _, _, cfg in chunk])
            except FloatingPointError as err:  # its "prompt i" counts within this batch
                lines = ", ".join(str(requests[i][0]) for i, _, _ in chunk)
                raise FloatingPointError(f"{args.input}, the batch of lines {lines}: {err}") from None
            for (i, _, _), g in zip(chunk, gens):
                results[i] = {
                    **_result_json(g, loaded.tokenizer),
                    "batch_wall_s": round(stats.wall_s, 4),
                    "batch_size": len(chunk),
                }
            bar.update(len(chunk))
            bar.set_postfix(tokens_per_s=f"{stats.tokens_per_s:.1f}")
    return results


def _generate_batch(args, loaded, decoder: Decoder, requests, eot) -> int:
    """--input/--output: every request checked first, then decoded in batches of any parameters
    the decoder can run together, results in input order."""
    batches = _plan_batches(args, loaded, decoder, requests, eot)
    lines = "".join(json.dumps(r) + "\n" for r in _run_batches(args, loaded, decoder, requests, batches))
    if args.output is None:
        sys.stdout.write(lines)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as out:
            out.write(lines)
    except OSError as err:
        # Checked before decoding, but it can still fail (disk full...): keep the results.
        print(
            f"fluid-rt: error: --output {args.output}: cannot write it ({err.strerror or err}); "
            "the results follow on stdout",
            file=sys.stderr,
        )
        sys.stdout.write(lines)
        return 1
    return 0


# -- bench ---------------------------------------------------------------------------------------


def cmd_bench(args) -> int:
    """Benchmarks are scripts in the source tree's benchmarks/ folder (not installed)."""
    for root in _bench_roots():
        script = os.path.join(root, f"bench_{args.name}.py")
        if os.path.isfile(script):
            sys.argv = [script, *args.args]
            sys.path.insert(0, root)  # the scripts import benchmarks/common.py
            runpy.run_path(script, run_name="__main__")
            return 0
    names = bench_names()
    valid = f"valid names: {', '.join(names)}" if names else "run it from a source checkout of fluid_rt"
    raise CLIError(
        f"bench {args.name}: no {BENCH_DIR}/bench_{args.name}.py here or next to the package ({valid})"
    )


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
    try:
        args = build_parser().parse_args(argv)
        return args.run(args)
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
