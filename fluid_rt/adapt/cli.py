"""``fluid-rt adapt``: train a gated FLUID adapter for a base model on this machine.

    fluid-rt adapt --model BASE --out DIR [--steps N] [--max-k K] [--rank R] [--resume] ...

Steps: (1) self-distilled data in ``DIR/data`` (the base model's greedy answers, generated with
fluid_rt; reused when present), (2) Stage I with a progress bar (loss, tokens/s, ETA) and a
checkpoint every ``--checkpoint-every`` seconds in ``DIR/checkpoint`` (``--resume`` continues
from it), (3) Stage II (the K-head), (4) the adapter in ``DIR/adapter`` and a report: tokens per
forward of elastic decoding on the held-out prompts (and that its tokens equal AR's).
"""

from __future__ import annotations

import argparse
import json
import sys


def register(sub) -> None:
    """Add the ``adapt`` subcommand to ``fluid-rt``'s subparsers (cli.build_parser calls this)."""
    a = sub.add_parser(
        "adapt",
        help="train a gated FLUID adapter (LoRA + mask embedding + K-head) for a base model on this machine",
        description=__doc__.split("\n\n")[0],
    )
    a.add_argument(
        "--model",
        default=None,
        help="base checkpoint: HF directory or .gguf (default: the embedded SmolLM2-135M-Instruct)",
    )
    a.add_argument("--out", required=True, help="output directory (data, checkpoint, adapter)")
    a.add_argument("--steps", type=int, default=2000, help="Stage I optimizer steps (default 2000)")
    a.add_argument("--max-k", type=int, default=6, help="masks per block at most (default 6)")
    a.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    a.add_argument("--alpha", type=float, default=32.0, help="LoRA alpha (default 32)")
    a.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    a.add_argument("--batch-size", type=int, default=4, help="samples per step (default 4)")
    a.add_argument(
        "--select-prob",
        type=float,
        default=0.35,
        help="probability that a response token starts a mask block (default 0.35)",
    )
    a.add_argument(
        "--mask-token-id",
        type=int,
        default=None,
        help="the mask token's id (default: chosen for the vocabulary, see "
        "fluid_rt.adapt.run.pick_mask_token)",
    )
    a.add_argument("--prompts", type=int, default=None, help="at most N training prompts")
    a.add_argument(
        "--extra-prompts",
        action="store_true",
        help="add the second round of training prompts (fluid_rt/adapt/extra_topics.py)",
    )
    a.add_argument("--max-new-tokens", type=int, default=96, help="length of distilled answers")
    a.add_argument("--checkpoint-every", type=float, default=300.0, help="seconds (default 300)")
    a.add_argument("--stage2-samples", type=int, default=192)
    a.add_argument(
        "--report-prompts",
        type=int,
        default=24,
        help="held-out prompts for the final tokens-per-forward report (0: none)",
    )
    a.add_argument(
        "--skip-distill",
        action="store_true",
        help="train on the samples already in DIR/data (re-read at every checkpoint, "
        "so a distillation still running elsewhere keeps adding to them)",
    )
    a.add_argument("--no-bf16", action="store_true", help="train in float32 (default: bfloat16 autocast)")
    a.add_argument(
        "--finalize",
        action="store_true",
        help="skip Stage I: take DIR/checkpoint as it is, run Stage II and write the "
        "adapter and the report (e.g. while a long Stage I run goes on)",
    )
    a.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a.set_defaults(run=run_command)


def run_command(args: argparse.Namespace) -> int:
    from fluid_rt.adapt.run import adapt

    report = adapt(args)
    print(json.dumps(report, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="fluid-rt")
    register(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
