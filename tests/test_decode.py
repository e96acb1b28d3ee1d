"""The elastic-horizon decoder against the golden cases (an independent float64 implementation of
the FLUID reference loop), greedy AR decoding, and its own batching and stop rules."""

import json
import os
import zlib

import pytest
import torch
from conftest import GOLDEN_DIR

from fluid_rt.decode import DecodeConfig, Decoder
from fluid_rt.loader import load_model

with open(os.path.join(GOLDEN_DIR, "cases.json")) as f:
    CASES = json.load(f)["cases"]
MODELS = sorted({c["model"] for c in CASES})


@pytest.fixture(scope="module")
def golden():
    masks = {c["model"]: c["mask_token_id"] for c in CASES}
    return {name: load_model(os.path.join(GOLDEN_DIR, name), mask_token_id=masks[name]) for name in MODELS}


def case_config(case, **overrides) -> DecodeConfig:
    eos = case["eos_token_id"]
    args = {
        "mode": "elastic",
        "max_new_tokens": case["max_new_tokens"],
        "block_size": case["block_size"],
        "min_block": case["min_block"],
        "threshold": case["threshold"],
        "remask": case["remask"],
        "horizon": "khead",
        "eos_token_ids": () if eos is None else (eos,),
    }
    args.update(overrides)
    return DecodeConfig(**args)


def decoder_for(loaded, case) -> Decoder:
    return Decoder(loaded.model, khead=loaded.khead, mask_token_id=case["mask_token_id"])


def expected_of(case):
    return case["expected_tokens"][: case["max_new_tokens"]]


@pytest.fixture(scope="module")
def alone(golden):
    """Every golden case decoded as a batch of one (computed once, checked case by case below)."""
    out = []
    for case in CASES:
        (g,), _ = decoder_for(golden[case["model"]], case).generate([case["prompt"]], case_config(case))
        out.append(g)
    return out


@pytest.mark.parametrize("idx", range(len(CASES)))
def test_golden_case_tokens_trace_and_forwards(alone, idx):
    case, g = CASES[idx], alone[idx]
    assert g.tokens == expected_of(case)
    # The reference overshoots max_new_tokens inside its last block: compare all blocks but ours last.
    assert g.trace[:-1] == case["trace"][: len(g.trace) - 1]
    assert len(g.trace) <= len(case["trace"])
    if len(case["trace"]) >= 2:
        assert g.forwards < case["reference_forwards"], (g.forwards, case["reference_forwards"])
    eos = case["eos_token_id"]
    assert g.stop_reason == ("eos" if eos is not None and eos in g.tokens else "length")


@pytest.mark.parametrize("model", MODELS)
def test_batch_of_all_cases_equals_batch_of_one(golden, alone, model):
    """Every golden case of a model in ONE batch (different prompts, thresholds, block sizes,
    remask, budgets and EOS ids): each row equals its batch-of-one run."""
    idx = [i for i, c in enumerate(CASES) if c["model"] == model]
    cases = [CASES[i] for i in idx]
    dec = decoder_for(golden[model], cases[0])
    gens, stats = dec.generate([c["prompt"] for c in cases], [case_config(c) for c in cases])
    for i, case, g in zip(idx, cases, gens):
        assert g.tokens == alone[i].tokens == expected_of(case)
        assert g.trace == alone[i].trace
        assert g.forwards == alone[i].forwards
    # Rows finish at different times and are dropped: the batch takes fewer forwards than the sum.
    assert stats.forwards < sum(g.forwards for g in gens)
    assert stats.forwards == max(g.forwards for g in gens)


@pytest.fixture(scope="module")
def hf64_fluid():
    """The golden models in float64 transformers with their K-heads: (model, khead) per name."""
    from benchmarks.reference_loop import load_hf_fluid_model

    return {m: load_hf_fluid_model(os.path.join(GOLDEN_DIR, m), dtype=torch.float64) for m in MODELS}


@pytest.fixture(scope="module")
def hf64(hf64_fluid):
    """The golden models in float64 transformers: the arbiter of float32 near-ties."""
    return {m: model for m, (model, _) in hf64_fluid.items()}


def expected_forwards(reference: dict, case: dict) -> int:
    """fluid_rt's forward count, from the reference loop's blocks: prefill fused with the first
    draft pass; every further draft pass; a verify unless the draft passes already showed the first
    mismatch (at or before the last pass's step s, every prediction was made from final tokens);
    after a mismatch, the next block's first pass (otherwise it rides in the verify). The last
    block ends at the first pass after which what a commit would take (the final tokens up to the
    step, or up to the known mismatch and its correction) reaches the budget or an EOS."""
    trace, steps, tokens = reference["trace"], reference["steps"], reference["tokens"]
    eos, remask = case["eos_token_id"], case["remask"]
    n, produced = 1, 0
    for i, (b, passes) in enumerate(zip(trace, steps)):
        f, last = b["mismatch"], i == len(trace) - 1
        for p, s in enumerate(passes, 1):
            take = f + 1 if remask and f is not None and f <= s else s + 1
            if last and (
                produced + take >= case["max_new_tokens"] or eos in tokens[produced : produced + take]
            ):
                return n + p - 1
        n += len(passes) - 1
        n += 0 if remask and f is not None and f <= passes[-1] else 1
        n += 1 if f is not None and not last else 0
        produced += b["committed"]
    return n


@pytest.mark.parametrize("idx", range(len(CASES)))
def test_forward_count_follows_the_fusion_rules(hf64_fluid, alone, idx):
    from benchmarks.reference_loop import reference_generate

    case = CASES[idx]
    ref = reference_generate(
        *hf64_fluid[case["model"]],
        case["prompt"],
        mask_token_id=case["mask_token_id"],
        eos_token_id=case["eos_token_id"],
        threshold=case["threshold"],
        block_size=case["block_size"],
        min_block=case["min_block"],
        remask=case["remask"],
        max_new_tokens=case["max_new_tokens"],
    )
    assert ref["trace"][:-1] == case["trace"][: len(ref["trace"]) - 1]
    assert len(ref["steps"]) == len(ref["trace"])
    assert [len(p) for p in ref["steps"]] == [b["draft_passes"] for b in ref["trace"]]
    assert alone[idx].forwards == expected_forwards(ref, case)


def assert_same_up_to_ties(hf, prompt, want, got, margin=1e-4):
    """Token lists equal, or first different where float64 says the two tokens' logits tie."""
    if want == got:
        return
    k = next(i for i, (a, b) in enumerate(zip(want, got)) if a != b)
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + want[:k]])).logits[0, -1]
    gap = (logits[want[k]] - logits[got[k]]).abs().item()
    assert gap < margin, f"position {k}: {want[k]} vs {got[k]} differ by {gap} in float64"


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize(
    "horizon,commit,threshold",
    [
        ("khead", "confidence", 0.9),
        ("entropy", "confidence", 0.5),
        ("fixed", "confidence", 0.2),
        ("fixed", "entropy", 0.5),
        ("entropy", "entropy", 2.0),
    ],
)
def test_remask_is_lossless_against_greedy_ar(golden, hf64, model, horizon, commit, threshold):
    loaded = golden[model]
    vocab = loaded.config.vocab_size
    dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=vocab - 1)
    seed = zlib.crc32(f"{model}/{horizon}/{commit}".encode())
    gen = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(0, vocab - 1, (n,), generator=gen).tolist() for n in (1, 4, 19, 2, 7, 30)]
    ar, _ = dec.generate(prompts, DecodeConfig(mode="ar", max_new_tokens=40))
    cfg = DecodeConfig(
        max_new_tokens=40, block_size=12, min_block=2, horizon=horizon, commit=commit, threshold=threshold
    )
    elastic, _ = dec.generate(prompts, cfg)
    for p, a, e in zip(prompts, ar, elastic):
        assert a.forwards == len(a.tokens) == 40
        assert_same_up_to_ties(hf64[model], p, a.tokens, e.tokens)
        assert sum(b["committed"] for b in e.trace) >= len(e.tokens)


def test_ar_mode_equals_transformers_greedy(golden):
    transformers = pytest.importorskip("transformers")
    loaded = golden["llama-tiny"]
    hf = transformers.LlamaForCausalLM.from_pretrained(
        os.path.join(GOLDEN_DIR, "llama-tiny"), torch_dtype=torch.float32
    ).eval()
    prompt = [5, 17, 99, 3, 250]
    want = hf.generate(
        torch.tensor([prompt]), max_new_tokens=24, do_sample=False, eos_token_id=None, pad_token_id=0
    )[0, len(prompt) :].tolist()
    (g,), _ = Decoder(loaded.model).generate([prompt], DecodeConfig(mode="ar", max_new_tokens=24))
    assert g.tokens == want
    assert g.forwards == 24 and g.trace == []


def test_stops_eos_set_and_exact_budget(golden):
    case = next(c for c in CASES if c["eos_token_id"] is not None and c["remask"])
    loaded = golden[case["model"]]
    dec = decoder_for(loaded, case)
    (free,), _ = dec.generate([case["prompt"]], case_config(case, eos_token_ids=()))
    # Any of several EOS ids stops at its first occurrence, inclusive.
    stop = [free.tokens[9], free.tokens[5]]
    (g,), _ = dec.generate([case["prompt"]], case_config(case, eos_token_ids=tuple(stop)))
    first = min(free.tokens.index(t) for t in stop)
    assert g.tokens == free.tokens[: first + 1] and g.stop_reason == "eos"
    for budget in (1, 2, 7, 16, 17):
        (g,), _ = dec.generate([case["prompt"]], case_config(case, eos_token_ids=(), max_new_tokens=budget))
        assert g.tokens == free.tokens[:budget] and g.stop_reason == "length"


def test_streaming_yields_every_token_once(golden):
    case = CASES[0]
    dec = decoder_for(golden[case["model"]], case)
    seen = []
    (g,), _ = dec.generate(
        [case["prompt"]], case_config(case), on_commit=lambda i, ids: seen.append((i, ids))
    )
    assert all(i == 0 and ids for i, ids in seen)
    assert [t for _, ids in seen for t in ids] == g.tokens
    assert len(seen) > 1


def test_bad_requests_raise_clear_errors(golden):
    loaded = golden["pangu-tiny"]
    vocab = loaded.config.vocab_size
    dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=vocab - 1, max_seq=64)
    with pytest.raises(ValueError, match="exceed the cache capacity"):
        dec.generate([[1] * 40], DecodeConfig(max_new_tokens=16))
    # AR needs no elastic scratch past prompt + max_new_tokens: 48 + 16 fits 64 exactly.
    (g,), _ = dec.generate([[1] * 48], DecodeConfig(mode="ar", max_new_tokens=16))
    assert len(g.tokens) == 16
    with pytest.raises(ValueError, match=r"= 64 \+ 49 \(3 \* block_size \+ 1: elastic scratch\)"):
        dec.generate([[1] * 48], DecodeConfig(max_new_tokens=16))
    with pytest.raises(ValueError, match="outside"):
        dec.generate([[vocab]], DecodeConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="empty"):
        dec.generate([[]], DecodeConfig(max_new_tokens=4))
    with pytest.raises(ValueError, match="must agree"):
        dec.generate(
            [[1], [2]], [DecodeConfig(max_new_tokens=4), DecodeConfig(max_new_tokens=4, horizon="fixed")]
        )
    with pytest.raises(ValueError, match="min_block"):
        DecodeConfig(block_size=4, min_block=5)
    with pytest.raises(ValueError, match="horizon"):
        DecodeConfig(horizon="psychic")
    no_mask = Decoder(loaded.model, khead=loaded.khead)
    with pytest.raises(ValueError, match="mask token"):
        no_mask.generate([[1]], DecodeConfig(max_new_tokens=4))
    no_head = Decoder(loaded.model, mask_token_id=vocab - 1)
    with pytest.raises(ValueError, match="K-head"):
        no_head.generate([[1]], DecodeConfig(mode="elastic", horizon="khead", max_new_tokens=4))
    # Nothing was lost: the decoder still works after the errors.
    (g,), _ = dec.generate([[1, 2]], DecodeConfig(max_new_tokens=4))
    assert len(g.tokens) == 4


@pytest.mark.parametrize("model", MODELS)
def test_static_width_steps_equal_trimmed_steps(golden, alone, model):
    """The CUDA graph's step logic (every forward at the static width [B, 1 + 2 * block_size], no
    trimming, no reused prefix), run uncaptured on the CPU: the same tokens, traces and forwards as
    the trimmed eager steps, for all cases of the model in one batch."""
    idx = [i for i, c in enumerate(CASES) if c["model"] == model]
    case = CASES[idx[0]]
    loaded = golden[model]
    dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=case["mask_token_id"], steps="static")
    gens, _ = dec.generate([CASES[i]["prompt"] for i in idx], [case_config(CASES[i]) for i in idx])
    for i, g in zip(idx, gens):
        assert (g.tokens, g.trace, g.forwards) == (alone[i].tokens, alone[i].trace, alone[i].forwards)


@pytest.mark.cuda
@pytest.mark.parametrize("model", MODELS)
def test_cuda_graph_decode_matches_golden(model):
    """On a GPU each elastic step is replayed as one CUDA graph; it must give the golden tokens and
    traces, exactly as the eager loop does (all cases of the model in one batch, so rows finish
    masked inside a captured shape, and the batch shrinks to new shapes as half of them finish),
    on cuda:0 and, where there is one, on cuda:1 (the capture stream on the model's device). AR
    steps are replayed as graphs too."""
    cases = [c for c in CASES if c["model"] == model]
    loaded = load_model(
        os.path.join(GOLDEN_DIR, model), mask_token_id=cases[0]["mask_token_id"], device="cuda"
    )
    cfgs = [case_config(c) for c in cases]
    prompts = [c["prompt"] for c in cases]
    runs = {}
    for graphs in (True, False):
        dec = Decoder(
            loaded.model, khead=loaded.khead, mask_token_id=cases[0]["mask_token_id"], cuda_graphs=graphs
        )
        runs[graphs], _ = dec.generate(prompts, cfgs)
        runs["ar", graphs], _ = dec.generate(prompts, [case_config(c, mode="ar") for c in cases])
    for case, g, e in zip(cases, runs[True], runs[False]):
        assert g.tokens == e.tokens == expected_of(case)
        assert g.trace == e.trace and g.trace[:-1] == case["trace"][: len(g.trace) - 1]
    assert [g.tokens for g in runs["ar", True]] == [g.tokens for g in runs["ar", False]]
    if torch.cuda.device_count() > 1:
        other = load_model(
            os.path.join(GOLDEN_DIR, model), mask_token_id=cases[0]["mask_token_id"], device="cuda:1"
        )
        dec = Decoder(other.model, khead=other.khead, mask_token_id=cases[0]["mask_token_id"])
        on_1, _ = dec.generate(prompts, cfgs)
        assert [g.tokens for g in on_1] == [g.tokens for g in runs[True]]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("model", MODELS)
def test_cuda_low_precision_forward_and_graph_decode(model, dtype):
    """The 16-bit CUDA paths (rope tables, cuBLAS linears, the kernels' bf16/fp16 instantiations,
    the K-head) stay close to the float32 CPU forward, and a graph-replayed elastic decode in that
    dtype runs each row to its budget with in-vocabulary tokens (no token equality: 16-bit ties)."""
    cases = [c for c in CASES if c["model"] == model][:6]
    mask = cases[0]["mask_token_id"]
    cpu = load_model(os.path.join(GOLDEN_DIR, model), mask_token_id=mask)
    gpu = load_model(os.path.join(GOLDEN_DIR, model), mask_token_id=mask, dtype=dtype, device="cuda")
    prompt = torch.tensor([list(range(3, 40))])
    want, _ = cpu.model(prompt, cpu.model.new_cache(1, 64))
    got, hidden = gpu.model(prompt.cuda(), gpu.model.new_cache(1, 64))
    assert got.dtype == torch.float32 and hidden.dtype == dtype
    rel = ((got.cpu() - want).norm() / want.norm()).item()
    assert rel < 0.05, rel
    dec = Decoder(gpu.model, khead=gpu.khead, mask_token_id=mask, cuda_graphs=True)
    gens, _ = dec.generate([c["prompt"] for c in cases], [case_config(c, eos_token_ids=()) for c in cases])
    vocab = gpu.config.vocab_size
    for case, g in zip(cases, gens):
        assert len(g.tokens) == case["max_new_tokens"] and g.stop_reason == "length"
        assert all(0 <= t < vocab for t in g.tokens)
        assert g.trace and all(1 <= b["committed"] <= b["K"] for b in g.trace)


@pytest.mark.parametrize("model", MODELS)
def test_batch_near_cache_end_equals_batch_of_one(golden, model):
    """Long prompts and budgets decoded together up to the end of the auto-sized cache (each eager
    step feeds every row from its reused prefix, as wide as the widest row): the batch equals
    each row alone."""
    loaded = golden[model]
    vocab = loaded.config.vocab_size
    dec = Decoder(loaded.model, khead=loaded.khead, mask_token_id=vocab - 1)
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, vocab - 1, (32,), generator=gen).tolist() for _ in range(4)]
    for threshold in (0.9, 0.3):
        cfg = DecodeConfig(max_new_tokens=64, block_size=16, threshold=threshold)
        batch, _ = dec.generate(prompts, cfg)
        for p, g in zip(prompts, batch):
            (alone,), _ = dec.generate([p], cfg)
            assert g.tokens == alone.tokens and g.trace == alone.trace


def drain(it):
    """All pieces of a ``Decoder.stream`` iterator and the Generation it returns."""
    pieces = []
    while True:
        try:
            pieces.append(next(it))
        except StopIteration as stop:
            return pieces, stop.value


def test_stream_yields_the_generation_piece_by_piece(golden):
    case = CASES[2]
    dec = decoder_for(golden[case["model"]], case)
    it = dec.stream(case["prompt"], case_config(case))
    pieces, g = drain(it)
    assert len(pieces) > 1 and [t for p in pieces for t in p] == g.tokens == expected_of(case)
    with pytest.raises(ValueError, match="outside"):
        list(dec.stream([10**6], case_config(case)))


def test_stream_closed_early_frees_the_decoder(golden):
    """Leaving a stream loop early stops its decode at the next step (no thread left running on the
    shared cache); meanwhile the decoder refuses a second call rather than corrupt the first."""
    import threading

    case = CASES[2]
    dec = decoder_for(golden[case["model"]], case)
    cfg = case_config(case, eos_token_ids=(), max_new_tokens=200)
    (want,), _ = dec.generate([case["prompt"]], cfg)
    threads = threading.active_count()
    it = dec.stream(case["prompt"], cfg)
    next(it)
    with pytest.raises(RuntimeError, match="already decoding"):
        dec.generate([case["prompt"]], cfg)
    with pytest.raises(RuntimeError, match="already decoding"):
        next(dec.stream(case["prompt"], cfg))
    it.close()
    assert threading.active_count() == threads
    (again,), _ = dec.generate([case["prompt"]], cfg)
    assert again.tokens == want.tokens and again.trace == want.trace


@pytest.mark.parametrize("mode", ["elastic", "ar"])
def test_non_finite_logits_raise(mode):
    """A model whose forward overflows or is broken (NaN weights here) is reported, not decoded
    into a stream of argmax-of-NaN tokens."""
    case = CASES[0]
    loaded = load_model(os.path.join(GOLDEN_DIR, case["model"]), mask_token_id=case["mask_token_id"])
    loaded.model.norm.fill_(float("nan"))
    dec = decoder_for(loaded, case)
    with pytest.raises(FloatingPointError, match="prompt 0: .*non-finite logits.*broken weights"):
        dec.generate([case["prompt"], case["prompt"]], case_config(case, mode=mode))


def test_stream_text_with_the_default_model():
    pytest.importorskip("gguf")
    loaded = load_model(None)
    tok = loaded.tokenizer
    ids = tok.encode(
        tok.apply_chat_template(
            [{"role": "user", "content": "Name three colours."}], add_generation_prompt=True
        )
    )
    it = Decoder(loaded.model).stream(ids, DecodeConfig(mode="ar", max_new_tokens=16), tok)
    pieces, g = drain(it)
    assert len(pieces) > 1 and "".join(pieces) == g.text == tok.decode(g.tokens)


# -- the step runner: CUDA graph logic and device/stream selection, checked on the CPU -----------


class FakeCuda:
    """Stands in for ``torch.cuda`` and records what the graph code asks of it, in order."""

    def __init__(self):
        self.events, self.current = [], None

    def _scope(self, *event, device=None):
        import contextlib

        fake = self

        @contextlib.contextmanager
        def scope():
            fake.events.append(("enter",) + event)
            before, fake.current = fake.current, device if device is not None else fake.current
            try:
                yield
            finally:
                fake.current = before
                fake.events.append(("exit",) + event)

        return scope()

    def device(self, device):
        return self._scope("device", device, device=device)

    def Stream(self, device=None):
        self.events.append(("new stream", device, self.current))
        return FakeStream(self, ("stream", device))

    def current_stream(self, device=None):
        return FakeStream(self, ("current", device))

    def stream(self, stream):
        return self._scope("use stream", stream.name)

    def CUDAGraph(self):
        return "graph"

    def graph(self, graph, stream=None):
        return self._scope("capture", graph, stream.name)


class FakeStream:
    def __init__(self, cuda, name):
        self.cuda, self.name = cuda, name

    def wait_stream(self, other):
        self.cuda.events.append(("wait", self.name, other.name))


def test_graph_capture_and_replay_run_on_the_model_device_and_its_stream():
    """With the model on cuda:1 the side stream is that device's, the capture uses it, and the
    warm-up, the capture and every replay run with cuda:1 current (#13 a)."""
    from fluid_rt.decode.runner import capture_graph, device_scope, replay_graph

    cuda, dev = FakeCuda(), torch.device("cuda", 1)
    calls = []

    def step():
        calls.append(("step", cuda.current))

    def undo():
        calls.append(("undo", cuda.current))

    capture_graph(step, dev, undo, cuda)
    stream = ("stream", dev)
    assert cuda.events[0] == ("enter", "device", dev) and cuda.events[-1] == ("exit", "device", dev)
    assert ("new stream", dev, dev) in cuda.events
    assert ("enter", "capture", "graph", stream) in cuda.events
    assert ("enter", "use stream", stream) in cuda.events
    # the side stream waits for the device's current stream before the warm-up, and back after
    assert ("wait", stream, ("current", dev)) in cuda.events
    assert ("wait", ("current", dev), stream) in cuda.events
    assert calls == [("step", dev), ("undo", dev), ("step", dev)]  # warm-up, undo, capture

    class Graph:
        def replay(self):
            calls.append(("replay", cuda.current))

    replay_graph(Graph(), dev, cuda)
    assert calls[-1] == ("replay", dev)
    # The decode (also in stream()'s worker thread) runs under the model's device; CPU: no-op.
    cuda.events.clear()
    with device_scope(dev, cuda):
        assert cuda.current == dev
    with device_scope(torch.device("cpu"), cuda):
        assert cuda.current is None
    assert cuda.events == [("enter", "device", dev), ("exit", "device", dev)]


@pytest.mark.parametrize("mode", ["elastic", "ar"])
def test_graph_steps_capture_once_per_batch_shape(golden, alone, monkeypatch, mode):
    """The graph path's logic on the CPU, a capture standing in for the CUDA graph (it runs the
    step for real; its replay runs it again): finished rows stay in the batch, masked, until half
    of them have finished, so a batch captures once per shape, not once per finished row (#13 f),
    and gives the golden tokens, traces and forward counts. AR steps are captured too."""
    from fluid_rt.decode import runner

    captures = []

    def capture(step, device, undo, cuda):
        captures.append(device)
        return type("Replay", (), {"replay": lambda self: step()})()

    monkeypatch.setattr(runner, "capture_graph", capture)
    monkeypatch.setattr(runner, "replay_graph", lambda graph, device, cuda: graph.replay())
    model = "pangu-tiny"
    idx = [i for i, c in enumerate(CASES) if c["model"] == model]
    loaded = golden[model]
    dec = Decoder(
        loaded.model, khead=loaded.khead, mask_token_id=CASES[idx[0]]["mask_token_id"], steps="graph"
    )
    cfgs = [case_config(CASES[i], mode=mode) for i in idx]
    gens, stats = dec.generate([CASES[i]["prompt"] for i in idx], cfgs)
    if mode == "elastic":
        for i, g in zip(idx, gens):
            assert (g.tokens, g.trace, g.forwards) == (alone[i].tokens, alone[i].trace, alone[i].forwards)
    else:
        eager = Decoder(loaded.model, mask_token_id=CASES[idx[0]]["mask_token_id"])
        want, _ = eager.generate([CASES[i]["prompt"] for i in idx], cfgs)
        assert [(g.tokens, g.forwards) for g in gens] == [(w.tokens, w.forwards) for w in want]
    finish = sorted(g.forwards for g in gens)  # rows finish at different steps ...
    assert len(set(finish)) > 3
    # ... but a capture happens only at the start and whenever the live rows halve.
    assert 1 <= len(captures) <= len(idx).bit_length()
    assert stats.forwards == max(finish)


def test_config_defaults_follow_the_commit_policy_and_the_model(golden):
    """DecodeConfig's defaults: the threshold by commit policy, mode and horizon from the model
    (as the CLI picks them); out-of-range and mistyped values raise."""
    assert DecodeConfig().commit_threshold == 0.9
    assert DecodeConfig(commit="entropy").commit_threshold == 0.3
    assert DecodeConfig(commit="entropy", threshold=2.0).commit_threshold == 2.0
    assert DecodeConfig(eos_token_ids=7).eos_token_ids == (7,)
    for bad, match in (
        ({"threshold": 1.5}, "max probability"),
        ({"threshold": -0.1}, "max prob"),
        ({"commit": "entropy", "threshold": -1.0}, "nats"),
        ({"threshold": float("nan")}, "finite"),
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"remask": "no"}, "remask"),
        ({"eos_token_ids": [1.0]}, "eos_token_ids"),
        ({"entropy_low": 2.0, "entropy_high": 1.0}, "entropy_low < entropy_high"),
        ({"mode": "fast"}, "mode"),
    ):
        with pytest.raises(ValueError, match=match):
            DecodeConfig(**bad)
    loaded = golden["pangu-tiny"]
    mask = loaded.config.vocab_size - 1
    with_head = Decoder(loaded.model, khead=loaded.khead, mask_token_id=mask)
    no_head = Decoder(loaded.model, mask_token_id=mask)

    def picked(dec, cfg):
        cfg = dec.resolve(cfg)
        return cfg.mode, cfg.horizon

    assert picked(with_head, DecodeConfig()) == ("elastic", "khead")
    assert picked(no_head, DecodeConfig()) == ("ar", "entropy")
    assert picked(no_head, DecodeConfig(mode="elastic")) == ("elastic", "entropy")
    # DecodeConfig() decodes with either decoder: AR without a K-head, elastic with one.
    (a,), _ = no_head.generate([[1, 2, 3]], DecodeConfig(max_new_tokens=8))
    (b,), _ = no_head.generate([[1, 2, 3]], DecodeConfig(mode="ar", max_new_tokens=8))
    assert a.tokens == b.tokens and a.trace == [] and a.forwards == 8
    (e,), _ = with_head.generate([[1, 2, 3]], DecodeConfig(max_new_tokens=8))
    assert e.trace and sum(b["committed"] for b in e.trace) >= len(e.tokens) == 8
