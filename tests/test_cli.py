"""The fluid-rt command line, end to end on the golden checkpoints and the embedded default model."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import GOLDEN_DIR

from fluid_rt import cli
from fluid_rt.cli import main

with open(os.path.join(GOLDEN_DIR, "cases.json")) as f:
    CASES = json.load(f)["cases"]
PANGU = os.path.join(GOLDEN_DIR, "pangu-tiny")


def case_args(case, *extra):
    args = [
        "generate",
        "--model",
        os.path.join(GOLDEN_DIR, case["model"]),
        "--mask-token-id",
        str(case["mask_token_id"]),
        "--prompt-ids",
        ",".join(map(str, case["prompt"])),
        "--threshold",
        str(case["threshold"]),
        "--block-size",
        str(case["block_size"]),
        "--min-block",
        str(case["min_block"]),
        "--max-new-tokens",
        str(case["max_new_tokens"]),
    ]
    if case["eos_token_id"] is not None:
        args += ["--eos-token-id", str(case["eos_token_id"])]
    if not case["remask"]:
        args.append("--no-remask")
    return args + list(extra)


PANGU_ARGS = ["generate", "--model", PANGU, "--mask-token-id", "511"]


def run(capsys, args):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def error_of(capsys, args, rc=2):
    """The one-line error of a run that must fail (exit status ``rc``) and print nothing else."""
    got, out, err = run(capsys, args)
    assert got == rc, (got, out, err)
    assert out == "" and err.startswith("fluid-rt: error: ") and err.count("\n") == 1, err
    return err


def usage_error_of(capsys, args):
    """The error argparse prints for a bad flag value: one line, as every other error (exit
    status 2)."""
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("fluid-rt: error: ") and err.count("\n") == 1, err
    return err.strip()


def model_copy(tmp_path, name="pangu-tiny", head=True, **files):
    """A golden checkpoint in tmp_path (weights linked, not copied) plus extra ``files``:
    name -> text, or a tokenizers.Tokenizer (saved as tokenizer.json)."""
    d = tmp_path / name
    d.mkdir()
    src = os.path.join(GOLDEN_DIR, name)
    shutil.copy(os.path.join(src, "config.json"), d / "config.json")
    for f in ["model.safetensors"] + (["model_head.bin"] if head else []):
        os.symlink(os.path.join(src, f), d / f)
    for f, content in files.items():
        if isinstance(content, str):
            (d / f).write_text(content)
        else:
            content.save(str(d / f))
    return str(d)


def byte_tokenizer():
    """A byte-level tokenizer with only the 256 byte tokens: a multi-byte character takes several
    tokens, and most of a 512-token model's ids are past its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def no_decoding(monkeypatch):
    """Make Decoder.generate record its calls instead of decoding: errors must come first."""
    calls = []
    monkeypatch.setattr(cli.Decoder, "generate", lambda self, *a, **k: calls.append(a) or 1 / 0)
    return calls


@pytest.mark.parametrize("idx", [0, 7, 11, 30])
def test_generate_json_matches_golden(capsys, idx):
    case = CASES[idx]
    rc, out, _ = run(capsys, case_args(case, "--json"))
    assert rc == 0
    res = json.loads(out)
    assert res["tokens"] == case["expected_tokens"][: case["max_new_tokens"]]
    assert res["mode"] == "elastic"
    assert res["trace"][:-1] == case["trace"][: len(res["trace"]) - 1]
    assert res["forwards"] < case["reference_forwards"] or len(case["trace"]) < 2


def test_generate_ar_mode_and_plain_output(capsys):
    case = CASES[0]
    rc, out, err = run(capsys, case_args(case, "--mode", "ar"))
    assert rc == 0
    assert out.split() == [str(t) for t in case["expected_tokens"][: case["max_new_tokens"]]]
    assert "mode ar" in err and "64 forwards" in err


def test_show_horizon_stream_and_plot(capsys, tmp_path):
    case = CASES[2]
    rc, out, _ = run(capsys, case_args(case, "--show-horizon"))
    assert rc == 0 and "\033[" in out
    plain = "".join(ch for ch in out.replace("\033[0m", "") if ch)
    for code in ("\033[31m", "\033[32m", "\033[33m", "\033[36m"):
        plain = plain.replace(code, "")
    assert plain.split() == [str(t) for t in case["expected_tokens"][: case["max_new_tokens"]]]

    rc, out, _ = run(capsys, case_args(case, "--stream"))
    assert rc == 0 and out.split() == plain.split()

    png = tmp_path / "k.png"
    rc, _, _ = run(capsys, case_args(case, "--horizon-plot", str(png)))
    assert rc == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_batch_jsonl_in_input_order(capsys, tmp_path):
    chosen = [CASES[i] for i in (3, 0, 6, 1, 5)]  # mixed thresholds, block sizes, remask, EOS
    req = tmp_path / "requests.jsonl"
    with open(req, "w") as f:
        for c in chosen:
            r = {
                "prompt_ids": c["prompt"],
                "threshold": c["threshold"],
                "block_size": c["block_size"],
                "min_block": c["min_block"],
                "remask": c["remask"],
                "max_new_tokens": c["max_new_tokens"],
            }
            if c["eos_token_id"] is not None:
                r["eos_token_ids"] = [c["eos_token_id"]]
            f.write(json.dumps(r) + "\n")
    res_path = tmp_path / "results.jsonl"
    rc, _, _ = run(
        capsys,
        [
            "generate",
            "--model",
            PANGU,
            "--mask-token-id",
            "511",
            "--input",
            str(req),
            "--output",
            str(res_path),
            "--batch-size",
            "3",
        ],
    )
    assert rc == 0
    results = [json.loads(line) for line in res_path.read_text().splitlines()]
    assert len(results) == len(chosen)
    for c, r in zip(chosen, results):
        assert r["tokens"] == c["expected_tokens"][: c["max_new_tokens"]]
        assert r["trace"][:-1] == c["trace"][: len(r["trace"]) - 1]
        assert set(r["trace"][0]) == {"K", "draft_passes", "committed", "mismatch"}
    # Lines of different parameters still share batches (the decoder batches any mix of them).
    assert [r["batch_size"] for r in results] == [3, 3, 3, 2, 2]


def test_bad_arguments_exit_cleanly(capsys, tmp_path):
    assert "expected comma-separated integers" in usage_error_of(
        capsys, ["generate", "--model", PANGU, "--prompt-ids", "1,x"]
    )
    assert "fluid-rt: error: give a PROMPT or --prompt-ids" in error_of(capsys, PANGU_ARGS)
    assert "no tokenizer" in error_of(capsys, PANGU_ARGS + ["hello"])
    assert "error" in error_of(
        capsys, ["generate", "--model", str(tmp_path / "nowhere"), "--prompt-ids", "1"]
    )
    assert "outside" in error_of(capsys, PANGU_ARGS + ["--prompt-ids", "1,99999"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1], "temperature": 3}\n')
    assert "unknown keys" in error_of(capsys, PANGU_ARGS + ["--input", str(bad)])


def test_default_model_chat_answers_paris(capsys):
    pytest.importorskip("gguf")
    # float weights: the first token is a near-tie ("The" vs "L", 0.08 logits apart in float32),
    # which the quantized default (int8 activations, as llama.cpp's) may flip (tests/test_quant.py)
    rc, out, err = run(
        capsys,
        [
            "generate",
            "--chat",
            "What is the capital of France?",
            "--max-new-tokens",
            "12",
            "--weights",
            "float",
        ],
    )
    assert rc == 0, err
    assert "Paris" in out


def test_bench_subcommand_runs_a_benchmark_script(capsys):
    rc = main(["bench", "commit", "--iters", "3", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    rows = json.loads(out)
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["op"] for r in rows} == {"draft_commit", "verify_commit"}
    assert all(r["ratio"] > 0 for r in rows)
    err = error_of(capsys, ["bench", "nope"])
    assert "no benchmarks/bench_nope.py" in err and "valid names: " in err and "linear" in err
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    assert "linear" in capsys.readouterr().out


def test_console_script_is_installed():
    import shutil
    import subprocess

    exe = shutil.which("fluid-rt")
    if exe is None:
        pytest.skip("fluid-rt is not on PATH (an in-place development build)")
    res = subprocess.run(
        [exe, "generate", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0 and "--horizon-plot" in res.stdout


# -- robustness: every mistake is a one-line error before any decoding ---------------------------


@pytest.mark.parametrize(
    "flag,value,message",
    [
        ("--batch-size", "-1", "must be >= 1"),
        ("--batch-size", "0", "must be >= 1"),
        ("--threads", "-1", "must be >= 1"),
        ("--threads", "0", "must be >= 1"),
        ("--max-new-tokens", "0", "must be >= 1"),
        ("--threshold", "nan", "must be finite"),
        ("--mask-token-id", "-3", "must be >= 0"),
    ],
)
def test_counts_and_numbers_are_checked_by_argparse(capsys, flag, value, message):
    err = usage_error_of(capsys, PANGU_ARGS + ["--prompt-ids", "1", flag, value])
    assert err == f"fluid-rt: error: argument {flag}: {message}, got {value!r}".replace(
        f"got {value!r}", f"got {value}" if message != "must be finite" else f"got {value!r}"
    )


def write_lines(path, *lines):
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return str(path)


@pytest.mark.parametrize(
    "line,key",
    [
        ('{"prompt_ids": [1], "remask": "false"}', "remask: expected true or false"),
        ('{"prompt": "x", "chat": "false"}', "chat: expected true or false"),
        ('{"prompt_ids": [1], "eos_token_ids": "486"}', "eos_token_ids: expected an integer or a list"),
        ('{"prompt_ids": [1], "eos_token_ids": [4.0]}', "eos_token_ids: expected an integer or a list"),
        ('{"prompt_ids": [5.7]}', "prompt_ids: expected a non-empty list of integers"),
        ('{"prompt_ids": [true, false]}', "prompt_ids: expected a non-empty list of integers"),
        ('{"prompt_ids": []}', "prompt_ids: expected a non-empty list of integers"),
        ('{"prompt_ids": [1], "max_new_tokens": 2.9}', "max_new_tokens: expected an integer >= 1"),
        ('{"prompt_ids": [1], "block_size": true}', "block_size: expected an integer >= 1"),
        ('{"prompt_ids": [1], "threshold": "0.5"}', "threshold: expected a finite number"),
        ('{"prompt_ids": [1], "mode": "fast"}', "mode: expected one of elastic, ar"),
    ],
)
def test_request_values_are_not_coerced(capsys, monkeypatch, tmp_path, line, key):
    calls = no_decoding(monkeypatch)
    req = write_lines(tmp_path / "r.jsonl", {"prompt_ids": [1]}, line)
    err = error_of(capsys, PANGU_ARGS + ["--input", req])
    assert f"{req}:2: {key}" in err and calls == []


def test_request_eos_ids_are_honoured_even_when_empty(capsys, tmp_path):
    # 480 is an EOS of case 1; an explicit [] means no EOS at all, not "the default" (here the
    # --eos-token-id flag), so that line runs to max_new_tokens like case 0
    c0, c1 = CASES[0], CASES[1]
    base = {"prompt_ids": c0["prompt"], "max_new_tokens": c0["max_new_tokens"]}
    req = write_lines(
        tmp_path / "r.jsonl", {**base, "eos_token_ids": []}, {**base, "eos_token_ids": 480}, base
    )
    rc, out, err = run(capsys, PANGU_ARGS + ["--input", req, "--eos-token-id", "480"])
    assert rc == 0, err
    res = [json.loads(line) for line in out.splitlines()]
    assert res[0]["tokens"] == c0["expected_tokens"][: c0["max_new_tokens"]]
    assert res[1]["tokens"] == res[2]["tokens"] == c1["expected_tokens"]
    assert res[1]["stop_reason"] == "eos"
    # --ignore-eos: the same as a request's [], from the command line
    rc, out, err = run(
        capsys,
        PANGU_ARGS
        + [
            "--prompt-ids",
            ",".join(map(str, c0["prompt"])),
            "--max-new-tokens",
            str(c0["max_new_tokens"]),
            "--ignore-eos",
            "--json",
        ],
    )
    assert rc == 0, err
    assert json.loads(out)["tokens"] == res[0]["tokens"]


@pytest.mark.parametrize(
    "line,message",
    [
        ("null", "expected a JSON object, got null"),
        ("42", "expected a JSON object, got a number"),
        ("[1]", "expected a JSON object, got a list"),
        ('"x"', "expected a JSON object, got a string"),
        ('{"prompt_ids": [[5]]}', "prompt_ids: expected a non-empty list of integers"),
        ('{"prompt_ids": [1], "threshold": Infinity}', "Infinity is not a JSON number"),
        ('{"prompt_ids": [1], "threshold": 1e400}', "threshold: expected a finite number"),
        ('{"prompt_ids": [1e400]}', "prompt_ids: expected a non-empty list of integers"),
        ('{"prompt_ids": [1], "prompt_ids": [2]}', "key 'prompt_ids' appears twice"),
        ("{}", "a request needs prompt (text) or prompt_ids"),
        ('{"prompt": "hi", "prompt_ids": [1]}', "give prompt or prompt_ids, not both"),
        ('{"prompt_ids": [1], "chat": true}', "chat: the chat template applies to prompt text"),
        ('{"prompt": "hi"}', "this model has no tokenizer"),
        ('{"prompt_ids": [1, 512]}', "prompt token id 512 is outside the vocabulary [0, 512)"),
        ('{"prompt_ids": [1], "eos_token_ids": [-1]}', "EOS token id -1 is outside the vocabulary"),
        ('{"prompt_ids": [1], "max_new_tokens": 100000}', "exceed the model context of"),
        ('{"prompt_ids": [1], "max_new_tokens": 1' + "0" * 400 + "}", "exceed the model context of"),
        ('{"prompt_ids": [1], "min_block": 9, "block_size": 8}', "need 1 <= min_block <= block_size"),
        ('{"prompt_ids": [1], "threshold": 2}', "threshold: with commit confidence it is a max prob"),
        ('{"prompt_ids": [1], "entropy_low": 3, "entropy_high": 1}', "entropy_low < entropy_high"),
        ('{"prompt_ids": [1], "horizon": "khead", "mode": "elastic"} x', "not JSON"),
    ],
)
def test_bad_request_lines_are_named_before_any_decoding(capsys, monkeypatch, tmp_path, line, message):
    # line 1 decodes fine in a group of its own; line 2 is blank (skipped, but counted)
    calls = no_decoding(monkeypatch)
    req = write_lines(tmp_path / "r.jsonl", {"prompt_ids": [1], "block_size": 4, "min_block": 2}, "  ", line)
    err = error_of(capsys, PANGU_ARGS + ["--input", req])
    assert f"{req}:3: " in err and message in err and calls == []


def test_unreadable_input_files(capsys, tmp_path):
    err = error_of(capsys, PANGU_ARGS + ["--input", str(tmp_path)])
    assert f"--input {tmp_path}: cannot read it (Is a directory)" in err
    latin1 = tmp_path / "latin1.jsonl"
    latin1.write_bytes(b'{"prompt_ids": [1]}\n{"prompt": "caf\xe9"}\n')
    assert f"{latin1}:2: not UTF-8 text (byte 0xe9" in error_of(capsys, PANGU_ARGS + ["--input", str(latin1)])
    assert "cannot read it" in error_of(capsys, PANGU_ARGS + ["--input", str(tmp_path / "no")])


def test_output_paths_are_checked_before_decoding(capsys, monkeypatch, tmp_path):
    calls = no_decoding(monkeypatch)
    req = write_lines(tmp_path / "r.jsonl", {"prompt_ids": [1]})
    same = os.path.join(str(tmp_path), ".", "r.jsonl")
    err = error_of(capsys, PANGU_ARGS + ["--input", req, "--output", same])
    assert "is the --input file" in err and json.loads(Path(req).read_text()) == {"prompt_ids": [1]}
    for path, why in ((tmp_path / "no" / "o.jsonl", "no such directory"), (tmp_path, "is a directory")):
        assert why in error_of(capsys, PANGU_ARGS + ["--input", req, "--output", str(path)])
        assert why in error_of(capsys, PANGU_ARGS + ["--prompt-ids", "1", "--horizon-plot", str(path)])
    assert "matplotlib cannot write .xyz" in error_of(
        capsys, PANGU_ARGS + ["--prompt-ids", "1", "--horizon-plot", str(tmp_path / "k.xyz")]
    )
    assert calls == []


def test_a_failing_plot_keeps_the_text(capsys, monkeypatch, tmp_path):
    def fail(g, path, tokenizer=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli, "plot_horizon", fail)
    rc, out, err = run(
        capsys,
        PANGU_ARGS
        + ["--prompt-ids", "1", "--max-new-tokens", "3", "--horizon-plot", str(tmp_path / "k.png"), "--json"],
    )
    assert rc == 1 and len(json.loads(out)["tokens"]) == 3
    assert "--horizon-plot" in err and "No space left on device" in err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--output", "o.jsonl"], "--output only applies to --input"),
        (["--batch-size", "4"], "--batch-size only applies to --input"),
        (["--stream", "--json"], "--stream and --json: choose one output format"),
        (["--show-horizon", "--json"], "--json and --show-horizon: choose one output format"),
        (["--stream", "--show-horizon"], "--stream and --show-horizon: choose one output format"),
        (["--chat"], "--chat applies the chat template to PROMPT text, not to --prompt-ids"),
        (["hello"], "give a PROMPT or --prompt-ids, not both"),
        (
            ["--min-block", "9", "--block-size", "8"],
            "need 1 <= --min-block <= --block-size, got --min-block=9, --block-size=8",
        ),
        (
            ["--threshold", "2"],
            (
                "--threshold: with --commit confidence it is a max probability, in "
                "[0, 1]; got 2.0 (use --commit entropy for a --threshold in nats)"
            ),
        ),
        (
            ["--commit", "entropy", "--threshold", "-1"],
            "--threshold: with --commit entropy it is an entropy in nats, >= 0; got -1.0",
        ),
        (["--entropy-low", "3", "--entropy-high", "1"], "--entropy-low < --entropy-high"),
        (["--ignore-eos", "--eos-token-id", "3"], "--ignore-eos and --eos-token-id: choose one"),
    ],
)
def test_flags_that_cannot_go_together(capsys, extra, message):
    assert message in error_of(capsys, PANGU_ARGS + ["--prompt-ids", "1"] + extra)


@pytest.mark.parametrize(
    "extra", [["--stream"], ["--show-horizon"], ["--prompt-ids", "1"], ["hello"], ["--horizon-plot", "k.png"]]
)
def test_flags_that_do_not_apply_to_input(capsys, tmp_path, extra):
    req = write_lines(tmp_path / "r.jsonl", {"prompt_ids": [1]})
    assert "does not apply to --input" in error_of(capsys, PANGU_ARGS + ["--input", req] + extra)


def test_horizon_output_needs_elastic_mode(capsys):
    err = error_of(capsys, PANGU_ARGS + ["--prompt-ids", "1", "--mode", "ar", "--show-horizon"])
    assert "--show-horizon: mode ar has no horizons" in err


@pytest.mark.parametrize(
    "device,message",
    [
        ("banana", "'banana' is not a device"),
        ("meta", "meta: fluid_rt runs on cpu or cuda"),
        ("cuda:99", "cuda:99: "),
    ],
)
def test_devices_are_checked_up_front(capsys, device, message):
    import torch

    if device == "cuda:99" and not torch.cuda.is_available():
        device, message = "cuda", "cuda: no CUDA GPU is usable here"
    err = usage_error_of(capsys, PANGU_ARGS + ["--prompt-ids", "1", "--device", device])
    assert err.startswith("fluid-rt: error: argument --device: ") and message in err


def test_prompt_that_is_not_utf8(capsys):
    # what Python makes of the bytes $'caf\xe9' on a UTF-8 command line
    err = error_of(capsys, PANGU_ARGS + [b"caf\xe9".decode("utf-8", "surrogateescape")])
    assert "PROMPT is not valid UTF-8 text (at character 4)" in err


def test_ctrl_c_exits_130_without_a_traceback(capsys, monkeypatch):
    def interrupted(self, *a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.Decoder, "generate", interrupted)
    assert run(capsys, PANGU_ARGS + ["--prompt-ids", "1"]) == (130, "", "")


def test_stream_into_a_closed_pipe_exits_quietly(tmp_path):
    import subprocess
    import sys

    import fluid_rt

    r, w = os.pipe()
    os.close(r)  # nobody will ever read: the first write fails (`fluid-rt ... | head -c0`)
    proc = subprocess.run(
        [sys.executable, "-m", "fluid_rt.cli", *PANGU_ARGS, "--prompt-ids", "1", "--stream"],
        stdout=w,
        stderr=subprocess.PIPE,
        text=True,
        timeout=300,
        check=False,
        cwd=os.path.dirname(os.path.dirname(fluid_rt.__file__)),
    )
    os.close(w)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_show_horizon_keeps_characters_whole_across_blocks(tmp_path):
    from fluid_rt.decode import Generation
    from fluid_rt.horizon_view import coloured
    from fluid_rt.tokenizer import load_tokenizer

    tok = load_tokenizer(model_copy(tmp_path, **{"tokenizer.json": byte_tokenizer()}))
    ids = tok.encode("a🦙b")  # the emoji is 4 byte tokens: blocks of 3 and 3 split it
    assert len(ids) == 6
    trace = [
        {"K": 4, "committed": 3, "draft_passes": 1, "mismatch": None},
        {"K": 2, "committed": 3, "draft_passes": 1, "mismatch": None},
    ]
    out = coloured(Generation(ids, "length", 2, trace), tok)
    assert "\ufffd" not in out
    assert out == "\033[36ma\033[0m\033[33m🦙b\033[0m"


def test_tokenizer_smaller_than_the_vocabulary(capsys, tmp_path):
    # pangu-tiny has 512 ids and generates many past this 256-token tokenizer: they decode to
    # nothing in the text and stay in the tokens
    model = model_copy(tmp_path, **{"tokenizer.json": byte_tokenizer()})
    case = CASES[0]
    args = [a if a != PANGU else model for a in case_args(case)]
    rc, out, err = run(capsys, args + ["--json"])
    assert rc == 0, err
    res = json.loads(out)
    assert res["tokens"] == case["expected_tokens"][: case["max_new_tokens"]]
    assert max(res["tokens"]) >= 256 and isinstance(res["text"], str)
    rc, streamed, _ = run(capsys, args + ["--stream"])
    assert rc == 0 and streamed == res["text"] + "\n"


def test_stop_at_end_of_think_needs_a_real_end_of_think_id(capsys, tmp_path):
    # llama-tiny with fluid.json naming 216 (a token case 40 emits) as its end of think
    case = CASES[41]
    model = model_copy(
        tmp_path,
        "llama-tiny",
        **{"fluid.json": json.dumps({"mask_token_id": 383, "end_of_think_token_id": 216})},
    )
    rc, out, err = run(
        capsys,
        [
            "generate",
            "--model",
            model,
            "--stop-at-end-of-think",
            "--json",
            "--prompt-ids",
            ",".join(map(str, case["prompt"])),
        ],
    )
    assert rc == 0, err
    res = json.loads(out)
    assert res["tokens"] == case["expected_tokens"] and res["stop_reason"] == "eos"
    # SmolLM2 is no openPangu model: 45982 (openPangu's [unused17]) is an ordinary token there
    pytest.importorskip("gguf")
    err = error_of(capsys, ["generate", "--stop-at-end-of-think", "hi", "--max-new-tokens", "2"])
    assert "--stop-at-end-of-think: this model has no end-of-think id" in err


def test_mode_default_follows_the_k_head(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--mode {elastic,ar} default: elastic when the model has a K-head, else ar" in text
    # a mask token (fluid.json) without a K-head: AR, as --help and the README say
    model = model_copy(tmp_path, head=False, **{"fluid.json": '{"mask_token_id": 511}'})
    rc, out, _ = run(
        capsys, ["generate", "--model", model, "--prompt-ids", "1", "--json", "--max-new-tokens", "2"]
    )
    assert rc == 0 and json.loads(out)["mode"] == "ar"
    # ... and asking for the K-head horizon there is refused in flag words
    err = error_of(
        capsys, ["generate", "--model", model, "--prompt-ids", "1", "--mode", "elastic", "--horizon", "khead"]
    )
    assert "--horizon khead needs a K-head (--head)" in err and "--horizon entropy" in err


def test_errors_speak_in_flags(capsys):
    # pangu-tiny has a K-head (so elastic) but openPangu's default mask id is past its vocabulary
    err = error_of(capsys, ["generate", "--model", PANGU, "--prompt-ids", "1"])
    assert "--mask-token-id" in err and "--mode ar" in err and "144208" in err
    assert "load_model" not in err and "mode='ar'" not in err
    rc, _, err = run(
        capsys, ["generate", "--model", PANGU, "--prompt-ids", "1", "--mode", "ar", "--max-new-tokens", "2"]
    )
    assert rc == 0 and "warning" not in err and "mask" not in err
    err = error_of(
        capsys,
        PANGU_ARGS + ["--prompt-ids", "1", "--horizon", "khead", "--head", os.path.join(GOLDEN_DIR, "nope")],
    )
    assert "nope" in err


def test_help_shows_defaults_without_markup(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    assert "``" not in top and "fluid-rt command" in top
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag, default in (
        ("--max-new-tokens", 64),
        ("--block-size", "the model adapter's, else 16"),
        ("--min-block", "the model adapter's, else 4"),
        ("--commit", "confidence"),
        ("--dtype", "float32"),
    ):
        assert f"{flag}" in text and f"default: {default})" in text, flag
    assert "cyan (longest)" in text and "green: long K" not in text
    assert "entropy_low" in text and "--ignore-eos" in text


def test_python_in_a_source_tree_without_a_build_says_so(tmp_path):
    """Python started in a checkout imports its fluid_rt/ (current directory first on sys.path),
    which has no compiled extension: the error says that, not "rebuild" (a circular import)."""
    import subprocess
    import sys

    import fluid_rt

    src = os.path.dirname(fluid_rt.__file__)
    shutil.copytree(src, tmp_path / "fluid_rt", ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    (tmp_path / "csrc").mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", "import fluid_rt"],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1
    assert "is being imported from its source tree" in proc.stderr
    assert "Run Python from another directory" in proc.stderr


def _package_parent() -> str:
    """The folder holding the fluid_rt the tests import: the checkout with an in-place build, or
    site-packages after `pip install .` (a checkout without a build cannot import)."""
    import fluid_rt

    return str(Path(fluid_rt.__file__).resolve().parents[1])


def test_readme_python_snippet_runs_as_a_file_from_anywhere(tmp_path):
    """The README's Python API snippet, saved as a file and run from another directory, prints
    the answer and a stats line."""
    import re
    import subprocess
    import sys

    pytest.importorskip("gguf")
    root = str(Path(GOLDEN_DIR).parents[2])
    readme = Path(root, "README.md").read_text()
    api = readme[readme.index("## Python API") :]
    code = re.search(r"```python\n(.*?)```", api, re.DOTALL)[1]
    (tmp_path / "snippet.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": _package_parent(), "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "snippet.py"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 2 and re.match(r"mode elastic: \d+ tokens, \d+ forwards, ", lines[-1])


def test_ctrl_c_while_torch_imports_exits_130_without_a_traceback(tmp_path):
    """The console script imports torch before main() runs: Ctrl-C there (a KeyboardInterrupt
    raised inside the package's import, stood in for by an import hook) still exits 130 quietly."""
    import subprocess
    import sys

    script = tmp_path / "fluid-rt"
    script.write_text(
        "import builtins\n"
        "real = builtins.__import__\n"
        "def hook(name, *args, **kwargs):\n"
        "    if name == 'fluid_rt.loader':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = hook\n"
        "from fluid_rt.cli import main\n"
    )
    env = {**os.environ, "PYTHONPATH": _package_parent()}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (130, "")
