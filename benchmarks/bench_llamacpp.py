"""fluid_rt against llama.cpp on the same GGUF file, prompt and threads (CPU).

    python benchmarks/bench_llamacpp.py [--model FILE.gguf] [--threads 2] [--prompt-tokens 128]
                                        [--new-tokens 64] [--isa avx512,avx2] [--weights quantized]

llama.cpp runs through llama-cpp-python (``pip install llama-cpp-python``: it compiles llama.cpp
from source; it is not part of CI's installs). Without it the baseline is skipped with a message
and only fluid_rt's numbers are printed. The default model is the embedded
SmolLM2-135M-Instruct.Q4_1.gguf.

Both decode greedily from the same 128-token prompt (English text, tokenized by the file's own
vocabulary), with the same number of threads:
* prefill: one forward over the prompt (llama.cpp: ``Llama.eval(prompt)``; fluid_rt: an AR
  generate of one token, i.e. the prompt's forward + the first argmax);
* decode: tokens/s of the following ``--new-tokens`` single-token forwards (fluid_rt: the
  difference of AR generates of 1 + N and 1 tokens).
Medians over ``--repeats`` runs; ratios are fluid_rt / llama.cpp tok/s (> 1: fluid_rt faster).
fluid_rt runs once per CPU path in ``--isa`` (``fluid_rt.use_cpu_isa``). Numbers from a shared,
loaded machine are noisy: compare ratios of one run. On an oversubscribed machine wall time mostly
measures the scheduler (a thread waiting at a barrier for a descheduled peer); ``--threads 1
--clock process`` then times the CPU time this process spent instead (llama.cpp runs in-process).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from common import emit_json, print_table, use_checkout

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


CLOCK = time.perf_counter  # or time.process_time (--clock process)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return statistics.median(times)


def bench_llama_cpp(path: str, prompt: list[int], new_tokens: int, threads: int, repeats: int):
    """(prefill seconds, decode seconds for new_tokens, greedy tokens) or None without llama_cpp."""
    try:
        import llama_cpp
    except ImportError:
        print(
            "bench_llamacpp: llama_cpp (llama-cpp-python) is not installed: skipping the llama.cpp "
            "baseline (pip install llama-cpp-python; it builds llama.cpp from source)",
            file=sys.stderr,
        )
        return None
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        verbose=False,
    )
    tokens: list[int] = []

    def prefill():
        llm.reset()
        llm.eval(prompt)

    def decode():
        prefill()
        tokens.clear()
        t0 = CLOCK()
        for _ in range(new_tokens):
            tok = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            tokens.append(tok)
            llm.eval([tok])
        return CLOCK() - t0

    t_prefill = median_time(prefill, repeats)
    decode()
    t_decode = statistics.median(decode() for _ in range(repeats))
    return t_prefill, t_decode, list(tokens)


def bench_fluid(dec: Decoder, prompt: list[int], new_tokens: int, repeats: int):
    """(prefill seconds, decode seconds for new_tokens, greedy tokens)."""

    def run(n):
        out, _ = dec.generate([prompt], DecodeConfig(mode="ar", max_new_tokens=n))
        return out[0].tokens

    t_first = median_time(lambda: run(1), repeats)
    t_all = median_time(lambda: run(1 + new_tokens), repeats)
    return t_first, max(t_all - t_first, 1e-9), run(1 + new_tokens)


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
        "--clock",
        choices=["wall", "process"],
        default="wall",
        help="process: CPU time of this process (use with --threads 1 on a loaded machine)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.clock == "process" else time.perf_counter
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model, weights=args.weights)
    path = loaded.path
    prompt = prompt_ids(loaded.tokenizer, args.prompt_tokens)
    n = args.new_tokens

    rows = []
    base = bench_llama_cpp(path, prompt, n, args.threads, args.repeats)
    if base is not None:
        rows.append(
            {
                "impl": "llama.cpp",
                "prefill_tok_s": len(prompt) / base[0],
                "decode_tok_s": n / base[1],
                "prefill_ratio": 1.0,
                "decode_ratio": 1.0,
                "same_tokens": n,
            }
        )
    dec = Decoder(loaded.model, max_seq=len(prompt) + n + 8)
    for isa in args.isa.split(","):
        with fluid_rt.use_cpu_isa(isa):
            t_pre, t_dec, toks = bench_fluid(dec, prompt, n, args.repeats)
        r = {
            "impl": f"fluid_rt {args.weights} {isa}",
            "prefill_tok_s": len(prompt) / t_pre,
            "decode_tok_s": n / t_dec,
        }
        if base is not None:
            r["prefill_ratio"] = r["prefill_tok_s"] / rows[0]["prefill_tok_s"]
            r["decode_ratio"] = r["decode_tok_s"] / rows[0]["decode_tok_s"]
            # greedy agreement with llama.cpp (informative: both quantize activations, differently)
            r["same_tokens"] = next((i for i, (a, b) in enumerate(zip(toks, base[2])) if a != b), n)
        rows.append(r)
    title = (
        f"{path.rsplit('/', 1)[-1]}: {len(prompt)}-token prompt, {n} new tokens, {args.threads} "
        f"threads, {args.clock} clock (medians of {args.repeats}; ratios = fluid_rt / llama.cpp)"
    )
    if args.json:
        emit_json("llamacpp", "cpu", rows, threads=args.threads, prompt_tokens=len(prompt), new_tokens=n)
    else:
        print_table(
            title,
            rows,
            ["impl", "prefill_tok_s", "decode_tok_s", "prefill_ratio", "decode_ratio", "same_tokens"],
        )


if __name__ == "__main__":
    main()
