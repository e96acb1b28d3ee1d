"""fluid_rt against llama.cpp on the same GGUF file, prompt and threads (CPU).

    python benchmarks/bench_llamacpp.py [--model FILE.gguf] [--threads 2] [--prompt-tokens 128]
                                        [--new-tokens 64] [--isa avx512,avx2] [--weights quantized]
                                        [--llama-cpp avx2=DIR]

llama.cpp runs through llama-cpp-python (``pip install llama-cpp-python``: it compiles llama.cpp
from source; it is not part of CI's installs). Without it the baseline is skipped with a message
and only fluid_rt's numbers are printed. The default model is the embedded
SmolLM2-135M-Instruct.Q4_1.gguf. On an Intel CPU with AMX, llama-cpp-python 0.3.36 built natively
(its log then shows ``AMX_INT8 = 1``) crashed with a segmentation fault in its first decode of this
file on our machine; built without its AMX code it runs (AVX-512, VNNI and BF16 kept):
``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
-DGGML_AVX_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" pip install --force-reinstall
--no-deps --no-cache-dir llama-cpp-python``.

Both decode greedily from the same 128-token prompt (English text, tokenized by the file's own
vocabulary), with the same number of threads:
* prefill: one forward over the prompt (llama.cpp: ``Llama.eval(prompt)``; fluid_rt: an AR
  generate of one token, i.e. the prompt's forward + the first argmax);
* decode: tokens/s of the following ``--new-tokens`` single-token forwards (fluid_rt: the
  difference of AR generates of 1 + N and 1 tokens).
Medians over ``--repeats`` runs; ratios are fluid_rt / llama.cpp tok/s (> 1: fluid_rt faster).

With the shipped FLUID adapter (the default model), a second table decodes ``--chat-prompts``
held-out chat prompts (``fluid_rt.adapt.prompts``, the adapter never trained on them) to EOS or
``--new-tokens``, one prompt at a time: llama.cpp greedy, fluid_rt greedy AR, and fluid_rt elastic
(whose tokens must equal its AR's). tok/s there is generated tokens over the whole generate call,
prefill included, summed over the prompts.
fluid_rt runs once per CPU path in ``--isa`` (``fluid_rt.use_cpu_isa``). A forced path on a bigger
CPU is compared with a llama.cpp of the same instruction set when ``--llama-cpp PATH=DIR`` names
one (a second llama-cpp-python installed with ``pip install --target DIR``), since an AVX2-only
machine runs llama.cpp's AVX2 code too; e.g. for avx2:
``CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
-DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF" pip
install --no-deps --no-cache-dir --target DIR llama-cpp-python``. Column ``vs`` names the baseline
of each ratio. Each llama.cpp runs in a child process (one libllama per process). Wall-clock times: run it
on an otherwise idle machine (on an oversubscribed one a thread waiting at a barrier for a
descheduled peer dominates), and compare ratios of one run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time

import torch

from common import cpu_path_label, emit_json, print_table, use_checkout

use_checkout()
import fluid_rt  # noqa: E402
from fluid_rt.decode import DecodeConfig, Decoder  # noqa: E402
from fluid_rt.loader import load_model  # noqa: E402

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based inks and a wooden press adapted from wine making. "
    "Within fifty years, presses were operating in more than two hundred cities across Europe, "
    "and the price of books fell so far that reading spread well beyond monasteries and "
    "universities. Printers standardized spelling, numbered pages and added indexes, and "
    "scholars could compare identical copies of a text for the first time. "
)


def prompt_ids(tokenizer, n: int) -> list[int]:
    ids = []
    while len(ids) < n:
        ids += tokenizer.encode(TEXT)
    return ids[:n]


CLOCK = time.perf_counter


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def llama_next_token(llm) -> int:
    """The greedy token after llama.cpp's last ``eval`` (its last row of logits: without
    ``logits_all``, llama-cpp-python keeps no ``scores`` row, so they are read from the context)."""
    import numpy as np

    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    return int(np.argmax(logits))


def open_llama_cpp(path: str, threads: int):
    """llama.cpp on ``path`` through the llama_cpp module this process imports."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        verbose=False,
    )


def _llama_cpp_child(conn, model_path: str, threads: int, package_dir: str | None) -> None:
    """A LlamaCpp's process: opens the model, then answers ("bench" | "chat", args) requests."""
    if package_dir:
        sys.path.insert(0, package_dir)
    try:
        llm = open_llama_cpp(model_path, threads)
    except ImportError as e:
        conn.send(("missing", str(e)))
        return
    import llama_cpp

    conn.send(("ready", os.path.dirname(llama_cpp.__file__)))
    calls = {"bench": bench_llama_cpp, "chat": llama_cpp_chat}
    while True:
        request = conn.recv()
        if request is None:
            return
        name, args = request
        conn.send(calls[name](llm, *args))


class LlamaCpp:
    """llama.cpp on a GGUF file, in a child process: the llama-cpp-python this environment has
    (``package_dir`` None) or one installed with ``pip install --target DIR`` (a build for another
    instruction set: ``--llama-cpp avx2=DIR``), since a process can load only one libllama.
    Requests go over a pipe one at a time, so llama.cpp and fluid_rt never run at once, and a crash
    of llama.cpp (as its AMX build's, see above) is reported instead of ending the benchmark."""

    def __init__(self, model_path: str, threads: int, package_dir: str | None = None):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_llama_cpp_child, args=(child_conn, model_path, threads, package_dir))
        self._proc.start()
        status, self.detail = self._receive()
        self.available = status == "ready"

    def _receive(self):
        try:
            return self._conn.recv()
        except EOFError:
            self._proc.join()
            raise SystemExit(
                f"bench_llamacpp: llama.cpp's process died (exit code {self._proc.exitcode})"
            ) from None

    def bench(self, prompt: list[int], new_tokens: int, repeats: int):
        """``bench_llama_cpp`` in the child."""
        self._conn.send(("bench", (prompt, new_tokens, repeats)))
        return self._receive()

    def chat(self, prompts, new_tokens: int, eos: int):
        """``llama_cpp_chat`` in the child."""
        self._conn.send(("chat", (prompts, new_tokens, eos)))
        return self._receive()

    def close(self) -> None:
        if self._proc.is_alive():
            self._conn.send(None)
        self._proc.join()


def open_baselines(model_path: str, threads: int, builds: list[str]) -> dict[str, LlamaCpp]:
    """The llama.cpp baselines by name: "llama.cpp" (this environment's llama-cpp-python) and one
    "llama.cpp PATH" per ``PATH=DIR`` of ``--llama-cpp``; those that cannot be imported are skipped
    with a message."""
    wanted = {"llama.cpp": None}
    for spec in builds:
        path, _, package_dir = spec.partition("=")
        if not package_dir:
            raise SystemExit(f"--llama-cpp: expected PATH=DIR, got {spec!r}")
        wanted[f"llama.cpp {path}"] = package_dir
    baselines = {}
    for name, package_dir in wanted.items():
        llm = LlamaCpp(model_path, threads, package_dir)
        if llm.available:
            baselines[name] = llm
            continue
        llm.close()
        print(
            f"bench_llamacpp: {name}: llama_cpp (llama-cpp-python) cannot be imported ({llm.detail}): "
            "skipping that baseline (pip install llama-cpp-python; it builds llama.cpp from source)",
            file=sys.stderr,
        )
    return baselines


def baseline_for(path_label: str, baselines: dict) -> str | None:
    """The baseline a fluid_rt CPU path is compared with: its own build's when ``--llama-cpp``
    gave one ("avx512+amx" counts as avx512), else this environment's llama.cpp."""
    own = f"llama.cpp {path_label.split('+')[0]}"
    return own if own in baselines else ("llama.cpp" if "llama.cpp" in baselines else None)


def llama_cpp_continue(llm, new_tokens: int, eos: int | None = None) -> list[int]:
    """llama.cpp's greedy tokens after what it has evaluated, up to ``new_tokens`` or ``eos``."""
    tokens: list[int] = []
    while len(tokens) < new_tokens:
        tokens.append(llama_next_token(llm))
        if tokens[-1] == eos:
            break
        llm.eval(tokens[-1:])
    return tokens


def bench_llama_cpp(llm, prompt: list[int], new_tokens: int, repeats: int):
    """(prefill seconds, decode seconds for new_tokens, greedy tokens)."""
    tokens: list[int] = []

    def prefill():
        llm.reset()
        llm.eval(prompt)

    def decode():
        prefill()
        t0 = CLOCK()
        tokens[:] = llama_cpp_continue(llm, new_tokens)
        return CLOCK() - t0

    t_prefill = median_time(prefill, repeats)
    decode()
    t_decode = statistics.median(decode() for _ in range(repeats))
    return t_prefill, t_decode, list(tokens)


def bench_fluid(dec: Decoder, prompt: list[int], new_tokens: int, repeats: int):
    """(prefill seconds, decode seconds for new_tokens, greedy tokens): from the decoder's own
    timing of AR generates of 1 + new_tokens (prefill gives the first token, then new_tokens
    single-token forwards)."""
    cfg = DecodeConfig(mode="ar", max_new_tokens=1 + new_tokens)
    dec.generate([prompt], cfg)  # warm-up
    pre, post = [], []
    for _ in range(repeats):
        out, stats = dec.generate([prompt], cfg)
        pre.append(stats.prefill_s)
        post.append(stats.wall_s - stats.prefill_s)
    return statistics.median(pre), statistics.median(post), out[0].tokens


def bench_row(impl: str, result: tuple, prompt_tokens: int, new_tokens: int) -> dict:
    """A row of the first table from a (prefill s, decode s, tokens) result; a baseline's own
    ratios are 1."""
    t_pre, t_dec, tokens = result
    row = {
        "impl": impl,
        "prefill_tok_s": prompt_tokens / t_pre,
        "decode_tok_s": new_tokens / t_dec,
        "tokens": tokens,
    }
    if impl.startswith("llama.cpp"):
        row.update(prefill_ratio=1.0, decode_ratio=1.0, same_tokens=new_tokens)
    return row


def bench_prompt(loaded, prompt: list[int], baselines: dict, args) -> list[dict]:
    """The first table's rows: prefill and decode of ``prompt`` by each llama.cpp baseline, then by
    fluid_rt on each CPU path, with ratios against the path's baseline (``baseline_for``)."""
    n = args.new_tokens
    rows = [
        bench_row(name, llm.bench(prompt, n, args.repeats), len(prompt), n) for name, llm in baselines.items()
    ]
    dec = Decoder(loaded.model, max_seq=len(prompt) + n + 8)
    for isa in args.isa.split(","):
        with fluid_rt.use_cpu_isa(isa):
            t_pre, t_dec, toks = bench_fluid(dec, prompt, n, args.repeats)
            label = cpu_path_label()
        r = bench_row(f"fluid_rt {args.weights} {label}", (t_pre, t_dec, toks), len(prompt), n)
        vs = baseline_for(label, baselines)
        if vs is not None:
            base = next(b for b in rows if b["impl"] == vs)
            r["prefill_ratio"] = r["prefill_tok_s"] / base["prefill_tok_s"]
            r["decode_ratio"] = r["decode_tok_s"] / base["decode_tok_s"]
            r["vs"] = vs
            # greedy agreement with llama.cpp (informative: both quantize activations, differently)
            r["same_tokens"] = next((i for i, (a, b) in enumerate(zip(toks, base["tokens"])) if a != b), n)
        rows.append(r)
    for r in rows:
        del r["tokens"]
    return rows


def chat_prompts(tokenizer, n: int) -> list[list[int]]:
    """The first ``n`` held-out chat prompts, kinds interleaved, as chat-template ids."""
    from fluid_rt.adapt.data import chat_ids
    from fluid_rt.adapt.prompts import KINDS, build_prompts

    by_kind = {k: [p for p in build_prompts()[1] if p.kind == k] for k in KINDS}
    mixed = [p for group in zip(*by_kind.values()) for p in group]
    return [chat_ids(tokenizer, p.text) for p in mixed[:n]]


def llama_cpp_chat(llm, prompts, new_tokens: int, eos: int):
    """(seconds, tokens per prompt) of llama.cpp greedy to EOS or ``new_tokens``."""
    outs, t0 = [], CLOCK()
    for prompt in prompts:
        llm.reset()
        llm.eval(prompt)
        outs.append(llama_cpp_continue(llm, new_tokens, eos))
    return CLOCK() - t0, outs


def fluid_chat(dec: Decoder, prompts, cfg: DecodeConfig):
    """(seconds, tokens per prompt, forwards) of fluid_rt on each prompt alone."""
    outs, forwards, t0 = [], 0, CLOCK()
    for prompt in prompts:
        gens, _ = dec.generate([prompt], cfg)
        outs.append(gens[0].tokens)
        forwards += gens[0].forwards
    return CLOCK() - t0, outs, forwards


def bench_chat(loaded, baselines: dict, args) -> list[dict] | None:
    """The chat table's rows (the llama.cpp baselines, then AR and elastic per CPU path), or None
    without an adapter. ``--repeats`` rounds, each running every implementation once in turn (so a
    slow spell of a shared machine hits them all alike); times are medians over the rounds."""
    from fluid_rt.adapt.report import decode_config

    if loaded.khead is None or loaded.adapter is None:
        print("bench_llamacpp: no FLUID adapter on this model: no elastic comparison", file=sys.stderr)
        return None
    prompts = chat_prompts(loaded.tokenizer, args.chat_prompts)
    eos = loaded.tokenizer.eos_token_id
    el_cfg = decode_config(loaded, args.new_tokens)
    ar_cfg = DecodeConfig(mode="ar", max_new_tokens=args.new_tokens, eos_token_ids=el_cfg.eos_token_ids)
    dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=loaded.fluid.mask_token_id)
    seconds: dict[str, list[float]] = {}
    done: dict[str, tuple] = {}  # impl -> (tokens per prompt, forwards)
    paths: dict[str, str] = {}  # fluid_rt impl -> its CPU path label
    for _ in range(args.repeats):
        for name, llm in baselines.items():
            secs, outs = llm.chat(prompts, args.new_tokens, eos)
            seconds.setdefault(name, []).append(secs)
            done[name] = (outs, sum(map(len, outs)))
        for isa in args.isa.split(","):
            with fluid_rt.use_cpu_isa(isa):
                path = cpu_path_label()
                fluid_chat(dec, prompts[:1], el_cfg)  # warm-up
                for mode, cfg in (("ar", ar_cfg), ("elastic", el_cfg)):
                    secs, outs, forwards = fluid_chat(dec, prompts, cfg)
                    impl = f"fluid_rt {mode} {path}"
                    seconds.setdefault(impl, []).append(secs)
                    done[impl], paths[impl] = (outs, forwards), path
            if done[f"fluid_rt elastic {path}"][0] != done[f"fluid_rt ar {path}"][0]:
                raise SystemExit(f"{path}: elastic tokens differ from AR's: not lossless")
    rows = []
    for impl, times in seconds.items():
        outs, forwards = done[impl]
        n = sum(map(len, outs))
        rows.append(
            {
                "impl": impl,
                "tokens": n,
                "tok_s": n / statistics.median(times),
                "tokens_per_forward": n / forwards,
            }
        )
    by_impl = {r["impl"]: r for r in rows}
    for r in rows:
        vs = baseline_for(paths[r["impl"]], baselines) if r["impl"] in paths else r["impl"]
        if vs is not None:
            r["ratio"], r["vs"] = r["tok_s"] / by_impl[vs]["tok_s"], vs
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="GGUF file (default: the embedded SmolLM2 Q4_1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--isa",
        default=",".join(reversed(fluid_rt._C.cpu_isas_supported())),
        help="fluid_rt CPU paths to run, comma-separated (default: every supported one)",
    )
    ap.add_argument("--weights", choices=["quantized", "float"], default="quantized")
    ap.add_argument(
        "--chat-prompts",
        type=int,
        default=12,
        help="held-out chat prompts for the AR / elastic table (0: skip it; needs the adapter)",
    )
    ap.add_argument(
        "--llama-cpp",
        action="append",
        default=[],
        metavar="PATH=DIR",
        help="compare fluid_rt's CPU path PATH with the llama-cpp-python installed in DIR (pip install "
        "--target DIR, built for that instruction set, e.g. AVX2 only) instead of this environment's; "
        "repeatable",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, weights=args.weights)
    path = loaded.path
    prompt = prompt_ids(loaded.tokenizer, args.prompt_tokens)
    n = args.new_tokens

    baselines = open_baselines(path, args.threads, args.llama_cpp)
    try:
        rows = bench_prompt(loaded, prompt, baselines, args)
        chat = bench_chat(loaded, baselines, args) if args.chat_prompts > 0 else None
    finally:
        for llm in baselines.values():
            llm.close()
    title = (
        f"{path.rsplit('/', 1)[-1]}: {len(prompt)}-token prompt, {n} new tokens, {args.threads} "
        f"threads, wall clock (medians of {args.repeats}; ratios = fluid_rt / llama.cpp)"
    )
    if args.json:
        emit_json("llamacpp", "cpu", rows, threads=args.threads, prompt_tokens=len(prompt), new_tokens=n)
        if chat:
            emit_json("llamacpp_chat", "cpu", chat, threads=args.threads, prompts=args.chat_prompts)
        return
    print_table(
        title,
        rows,
        ["impl", "prefill_tok_s", "decode_tok_s", "prefill_ratio", "decode_ratio", "vs", "same_tokens"],
    )
    if chat:
        print_table(
            f"{args.chat_prompts} held-out chat prompts, one at a time, to EOS or {n} tokens "
            f"(tok/s over whole generate calls, medians of {args.repeats} alternating rounds; "
            "ratio = fluid_rt / llama.cpp)",
            chat,
            ["impl", "tokens", "tok_s", "tokens_per_forward", "ratio", "vs"],
        )


if __name__ == "__main__":
    main()
