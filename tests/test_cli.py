"""The fluid-rt command line, end to end on the golden checkpoints and the embedded default model."""

import json
import os

import pytest

from conftest import GOLDEN_DIR
from fluid_rt.cli import main

with open(os.path.join(GOLDEN_DIR, "cases.json")) as f:
    CASES = json.load(f)["cases"]
PANGU = os.path.join(GOLDEN_DIR, "pangu-tiny")


def case_args(case, *extra):
    args = ["generate", "--model", os.path.join(GOLDEN_DIR, case["model"]),
            "--mask-token-id", str(case["mask_token_id"]),
            "--prompt-ids", ",".join(map(str, case["prompt"])),
            "--threshold", str(case["threshold"]), "--block-size", str(case["block_size"]),
            "--min-block", str(case["min_block"]), "--max-new-tokens", str(case["max_new_tokens"])]
    if case["eos_token_id"] is not None:
        args += ["--eos-token-id", str(case["eos_token_id"])]
    if not case["remask"]:
        args.append("--no-remask")
    return args + list(extra)


def run(capsys, args):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


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
            r = {"prompt_ids": c["prompt"], "threshold": c["threshold"], "block_size": c["block_size"],
                 "min_block": c["min_block"], "remask": c["remask"],
                 "max_new_tokens": c["max_new_tokens"]}
            if c["eos_token_id"] is not None:
                r["eos_token_ids"] = [c["eos_token_id"]]
            f.write(json.dumps(r) + "\n")
    res_path = tmp_path / "results.jsonl"
    rc, _, _ = run(capsys, ["generate", "--model", PANGU, "--mask-token-id", "511",
                            "--input", str(req), "--output", str(res_path), "--batch-size", "3"])
    assert rc == 0
    results = [json.loads(line) for line in open(res_path)]
    assert len(results) == len(chosen)
    for c, r in zip(chosen, results):
        assert r["tokens"] == c["expected_tokens"][: c["max_new_tokens"]]
        assert r["trace"][:-1] == c["trace"][: len(r["trace"]) - 1]
        assert set(r["trace"][0]) == {"K", "draft_passes", "committed", "mismatch"}


def test_bad_arguments_exit_cleanly(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["generate", "--model", PANGU, "--prompt-ids", "1,x"])
    with pytest.raises(SystemExit, match="PROMPT or --prompt-ids"):
        main(["generate", "--model", PANGU, "--mask-token-id", "511"])
    with pytest.raises(SystemExit, match="no tokenizer"):
        main(["generate", "--model", PANGU, "--mask-token-id", "511", "hello"])
    rc, _, err = run(capsys, ["generate", "--model", str(tmp_path / "nowhere"), "--prompt-ids", "1"])
    assert rc == 2 and "error" in err
    rc, _, err = run(capsys, ["generate", "--model", PANGU, "--mask-token-id", "511",
                              "--prompt-ids", "1,99999"])
    assert rc == 2 and "outside" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt_ids": [1], "temperature": 3}\n')
    with pytest.raises(SystemExit, match="unknown keys"):
        main(["generate", "--model", PANGU, "--mask-token-id", "511", "--input", str(bad)])


def test_default_model_chat_answers_paris(capsys):
    pytest.importorskip("gguf")
    rc, out, err = run(capsys, ["generate", "--chat", "What is the capital of France?",
                                "--max-new-tokens", "12"])
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
    with pytest.raises(SystemExit, match="no benchmarks/bench_nope.py"):
        main(["bench", "nope"])


def test_console_script_is_installed():
    import shutil
    import subprocess

    exe = shutil.which("fluid-rt")
    if exe is None:
        pytest.skip("fluid-rt is not on PATH (an in-place development build)")
    res = subprocess.run([exe, "generate", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "--horizon-plot" in res.stdout
