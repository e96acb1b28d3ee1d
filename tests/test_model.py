"""Transformer forward vs transformers (LlamaForCausalLM / Qwen2ForCausalLM) on random tiny models.

Each model is saved with save_pretrained and loaded back through ``load_hf_checkpoint`` (PanguEmbedded
gets a hand-written config.json over the same Llama weights), so the loader is covered too. Checked:
prefill, block decode over a growing cache (with a throw-away draft block written past seqlens first,
as the decoder does), two cache rows of different lengths addressed by ``rows``, ``logits_slots``,
and bfloat16 on CPU.
"""

import copy
import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from fluid_rt.cache import KVCache  # noqa: E402
from fluid_rt.config import ModelConfig  # noqa: E402
from fluid_rt.model import Transformer  # noqa: E402
from fluid_rt.weights import load_hf_checkpoint  # noqa: E402

# name -> (HF class name, config kwargs, extra: pangu / sharded)
CASES = {
    "pangu_gqa2": (
        "llama",
        dict(
            hidden_size=256,
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_bias=True,
            rope_theta=1.6e7,
        ),
        {"pangu": True},
    ),
    "llama_mha_tied": (
        "llama",
        dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
        {},
    ),
    "llama_bias_mlpbias_gqa4_headdim": (
        "llama",
        dict(
            hidden_size=192,
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=64,
            attention_bias=True,
            mlp_bias=True,
        ),
        {"shard": True},
    ),
    "llama_headdim80": (
        "llama",
        dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, head_dim=80),
        {},
    ),
    "llama3_rope_gqa8": (
        "llama",
        dict(
            hidden_size=128,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=64,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
        {},
    ),
    "qwen2_gqa2_tied": (
        "qwen2",
        dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
        {},
    ),
}

VOCAB = 211


def _make_hf(kind, kwargs, seed):
    common = dict(
        vocab_size=VOCAB,
        intermediate_size=176,
        num_hidden_layers=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    common.update(kwargs)
    if kind == "llama":
        hf_cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(hf_cfg)
    else:
        hf_cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(hf_cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request, tmp_path_factory):
    """(name, HF model, our Transformer loaded from disk, ModelConfig)."""
    name = request.param
    kind, kwargs, extra = CASES[name]
    hf = _make_hf(kind, kwargs, seed=sorted(CASES).index(name))
    path = tmp_path_factory.mktemp(name)
    hf.save_pretrained(path, max_shard_size="100KB" if extra.get("shard") else "5GB")
    if extra.get("shard"):
        assert os.path.isfile(path / "model.safetensors.index.json")
    if extra.get("pangu"):
        d = json.loads((path / "config.json").read_text())
        d.update(model_type="PanguEmbedded", architectures=["PanguEmbeddedForCausalLM"], bias=True)
        d.pop("attention_bias")
        (path / "config.json").write_text(json.dumps(d))
    cfg, sd = load_hf_checkpoint(path)
    assert cfg.family == ("pangu" if extra.get("pangu") else kind)
    return name, hf, Transformer(cfg, sd), cfg


def _hf_full(hf, seq):
    with torch.no_grad():
        out = hf.model(torch.tensor([seq]))
        hidden = out.last_hidden_state  # after the final norm
        logits = hf.lm_head(hidden).float()
    return logits[0], hidden[0]


def _close(ours, ref, rtol=1e-4):
    err = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    assert err <= rtol * scale, f"max abs err {err} vs scale {scale}"


def test_config_flags(pair):
    name, hf, model, cfg = pair
    c = hf.config
    assert cfg.attention_bias == (
        name.startswith("qwen2") or c.to_dict().get("attention_bias", False) or name.startswith("pangu")
    )
    assert cfg.o_bias == (name.startswith("pangu") or c.to_dict().get("attention_bias", False))
    assert cfg.head_dim == hf.model.layers[0].self_attn.head_dim
    assert cfg.tie_word_embeddings == bool(c.tie_word_embeddings)


def test_prefill_matches_hf(pair):
    _, hf, model, cfg = pair
    gen = torch.Generator().manual_seed(1)
    seq = torch.randint(0, VOCAB, (23,), generator=gen).tolist()
    ref_logits, ref_hidden = _hf_full(hf, seq)
    cache = KVCache(cfg, 2, 40)
    logits, hidden = model(torch.tensor([seq]), cache)
    assert logits.dtype == torch.float32 and logits.shape == (1, 23, VOCAB)
    assert hidden.shape == (1, 23, cfg.hidden_size)
    _close(logits[0], ref_logits)
    _close(hidden[0], ref_hidden)
    assert cache.seqlens.tolist() == [0, 0], "the model must never advance seqlens"


def test_block_decode_over_growing_cache(pair):
    _, hf, model, cfg = pair
    gen = torch.Generator().manual_seed(2)
    blocks = [7, 1, 4, 9, 2, 8, 3, 5, 6]  # first is the prompt
    seq = torch.randint(0, VOCAB, (sum(blocks),), generator=gen).tolist()
    ref_logits, ref_hidden = _hf_full(hf, seq)
    cache = KVCache(cfg, 1, 64)
    start = 0
    for T in blocks:
        # A draft block written past seqlens first (what the decoder does): must leave no trace.
        junk = torch.randint(0, VOCAB, (1, 9), generator=gen)
        model(junk, cache)
        block = torch.tensor([seq[start : start + T]])
        logits, hidden = model(block, cache)
        _close(logits[0], ref_logits[start : start + T])
        _close(hidden[0], ref_hidden[start : start + T])
        start += T
        cache.seqlens += T  # commit by hand


def _two_prefilled_rows(hf, model, cfg, gen, a_len, b_len, cache_rows):
    """Random sequences a, b (lengths a_len, b_len = (prefilled, more)); a's first part prefilled
    into cache row cache_rows[0], b's into cache_rows[1] (committed by hand; the cache has one
    row more), every other slot NaN (unwritten slots must never be read). Returns a, b, HF's
    (logits, hidden) of each full sequence, and the cache."""
    a = torch.randint(0, VOCAB, (sum(a_len),), generator=gen).tolist()
    b = torch.randint(0, VOCAB, (sum(b_len),), generator=gen).tolist()
    cache = KVCache(cfg, 3, 32)
    cache.k.fill_(float("nan"))
    cache.v.fill_(float("nan"))
    for seq, n, row, dtype in (
        (a, a_len[0], cache_rows[0], torch.int32),  # both index dtypes
        (b, b_len[0], cache_rows[1], torch.int64),
    ):
        model(torch.tensor([seq[:n]]), cache, rows=torch.tensor([row], dtype=dtype))
    cache.seqlens[cache_rows[0]], cache.seqlens[cache_rows[1]] = a_len[0], b_len[0]
    return a, b, _hf_full(hf, a), _hf_full(hf, b), cache


def test_two_rows_different_lengths(pair):
    _, hf, model, cfg = pair
    gen = torch.Generator().manual_seed(3)
    a, b, (ref_a, _), (ref_b, _), cache = _two_prefilled_rows(hf, model, cfg, gen, (5, 4), (11, 4), (2, 0))
    rows = torch.tensor([2, 0], dtype=torch.int32)
    block = torch.tensor([a[5:], b[11:]])
    logits, hidden = model(block, cache, rows=rows)
    _close(logits[0], ref_a[5:])
    _close(logits[1], ref_b[11:])
    # logits_slots: only the requested slots, gathered before the lm_head.
    slots = torch.tensor([[3, 0], [1, 2]])
    sliced, hidden2 = model(block, cache, rows=rows, logits_slots=slots)
    assert sliced.shape == (2, 2, VOCAB)
    torch.testing.assert_close(
        sliced, logits.gather(1, slots[..., None].expand(-1, -1, VOCAB)), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(hidden2, hidden, rtol=1e-5, atol=1e-6)
    assert cache.seqlens.tolist() == [11, 0, 5]


def test_ragged_widths_match_hf(pair):
    """widths: each row runs only its first widths[b] tokens, packed into one sequence for the
    matmuls; the outputs there equal HF's, the slots past a row's width are zeros."""
    _, hf, model, cfg = pair
    gen = torch.Generator().manual_seed(4)
    a, b, (ref_a, ref_ha), (ref_b, ref_hb), cache = _two_prefilled_rows(
        hf, model, cfg, gen, (6, 3), (9, 7), (1, 0)
    )
    junk = torch.randint(0, VOCAB, (4,), generator=gen).tolist()
    block = torch.tensor([a[6:] + junk, b[9:]])  # row 0 is 3 tokens wide, padded to 7
    rows = torch.tensor([1, 0], dtype=torch.int32)
    logits, hidden = model(block, cache, rows=rows, widths=[3, 7])
    assert logits.shape == (2, 7, VOCAB) and hidden.shape == (2, 7, cfg.hidden_size)
    _close(logits[0, :3], ref_a[6:])
    _close(hidden[0, :3], ref_ha[6:])
    _close(logits[1], ref_b[9:])
    _close(hidden[1], ref_hb[9:])
    assert not logits[0, 3:].any() and not hidden[0, 3:].any()
    with pytest.raises(ValueError, match="widths"):
        model(block, cache, rows=rows, widths=[3, 8])
    with pytest.raises(ValueError, match="widths"):
        model(block, cache, rows=rows, widths=[3])


def test_bfloat16_close_to_float32(pair):
    name, hf, model, cfg = pair
    if name not in ("pangu_gqa2", "qwen2_gqa2_tied"):
        pytest.skip("bf16 checked on two families to keep the file fast")
    sd = {k: v.detach() for k, v in hf.state_dict().items()}
    bf = Transformer(cfg, sd, dtype=torch.bfloat16)
    gen = torch.Generator().manual_seed(4)
    seq = torch.randint(0, VOCAB, (1, 13), generator=gen)
    c32, c16 = KVCache(cfg, 1, 32), KVCache(cfg, 1, 32, dtype=torch.bfloat16)
    l32, h32 = model(seq[:, :9], c32)
    l16, h16 = bf(seq[:, :9], c16)
    assert l16.dtype == torch.float32 and h16.dtype == torch.bfloat16
    c32.seqlens += 9
    c16.seqlens += 9
    d32, _ = model(seq[:, 9:], c32)
    d16, _ = bf(seq[:, 9:], c16)
    # float_logits=False: the same logits, left in bfloat16 (what token_entropy reads), also when
    # rows are packed at their own widths
    raw, _ = bf(seq[:, 9:], c16, float_logits=False)
    assert raw.dtype == torch.bfloat16 and torch.equal(raw.float(), d16)
    raw, hidden = bf(seq[:, 9:], c16, rows=torch.tensor([0]), widths=[3], float_logits=False)
    assert raw.dtype == torch.bfloat16
    assert (raw[:, :3].float() - d16[:, :3]).abs().max() <= 0.02 * d16.abs().max()
    assert not raw[:, 3:].any() and not hidden[:, 3:].any()
    for a, b in ((l16, l32), (d16, d32)):
        assert torch.isfinite(a).all()
        err = (a - b).abs().max().item()
        assert err <= 0.05 * b.abs().max().item(), err
    # bf16 hidden vs HF's own bf16 run, loosely (same rounding points, different kernels).
    # (a copy: casting the shared module back would leave its rotary inv_freq buffer rounded)
    hf16 = _hf_full(copy.deepcopy(hf).to(torch.bfloat16), seq[0].tolist())[0]
    err = (torch.cat([l16, d16], 1)[0] - hf16).abs().max().item()
    assert err <= 0.05 * hf16.abs().max().item(), err


def test_attention_goes_through_the_kernel(pair, monkeypatch):
    """Every layer's attention is fluid_rt.ops.causal_attention (no other attention path)."""
    import fluid_rt.ops

    _, hf, model, cfg = pair
    calls = []
    real = fluid_rt.ops.causal_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(fluid_rt.ops, "causal_attention", counting)
    seq = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(8))
    cache = KVCache(cfg, 2, 24)
    model(seq[:, :7], cache, rows=torch.tensor([1, 0]))
    assert len(calls) == cfg.num_layers and calls[0][:2] == (2, 7)


def test_unsupported_head_dim_is_refused():
    cfg = ModelConfig(
        family="llama",
        vocab_size=10,
        hidden_size=48,
        intermediate_size=32,
        num_layers=1,
        num_heads=1,
        num_kv_heads=1,
        head_dim=48,
    )
    with pytest.raises(ValueError, match="head_dim 48"):
        Transformer(cfg, {}, dtype=torch.float32)


def test_cache_reset_and_capacity():
    cfg = ModelConfig(
        family="llama",
        vocab_size=10,
        hidden_size=128,
        intermediate_size=32,
        num_layers=3,
        num_heads=2,
        num_kv_heads=1,
        head_dim=64,
    )
    cache = KVCache(cfg, 4, 17)
    assert cache.k.shape == (3, 4, 17, 1, 64) and cache.v.shape == cache.k.shape
    assert cache.seqlens.dtype == torch.int32 and cache.capacity == 17
    cache.seqlens.copy_(torch.tensor([3, 4, 5, 6]))
    cache.reset(torch.tensor([1, 3]))
    assert cache.seqlens.tolist() == [3, 0, 5, 0]
    cache.reset()
    assert cache.seqlens.tolist() == [0, 0, 0, 0]


def test_state_dict_checks():
    cfg = ModelConfig(
        family="qwen2",
        vocab_size=10,
        hidden_size=128,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=64,
        attention_bias=True,
    )
    from fluid_rt.config import expected_tensor_shapes

    sd = {n: torch.zeros(s) for n, s in expected_tensor_shapes(cfg).items()}
    Transformer(cfg, dict(sd))
    bad = dict(sd)
    bad["model.layers.0.self_attn.k_proj.bias"] = torch.zeros(65)
    with pytest.raises(ValueError, match="k_proj.bias"):
        Transformer(cfg, bad)
    bad = dict(sd)
    del bad["model.norm.weight"]
    with pytest.raises(ValueError, match="model.norm.weight"):
        Transformer(cfg, bad)


# ---------------------------------------------------------------- CUDA (run on a lent GPU)


def _hf_state(hf):
    return {k: v.detach().clone() for k, v in hf.state_dict().items()}


@pytest.mark.cuda
def test_cuda_float32_matches_hf(pair):
    _, hf, _, cfg = pair
    model = Transformer(cfg, _hf_state(hf), device="cuda")
    gen = torch.Generator().manual_seed(5)
    blocks = [6, 1, 9, 4]
    seq = torch.randint(0, VOCAB, (sum(blocks),), generator=gen).tolist()
    ref_logits, ref_hidden = _hf_full(hf, seq)
    cache = KVCache(cfg, 1, 48, device="cuda")
    start = 0
    for T in blocks:
        logits, hidden = model(torch.tensor([seq[start : start + T]], device="cuda"), cache)
        _close(logits[0].cpu(), ref_logits[start : start + T])
        _close(hidden[0].cpu(), ref_hidden[start : start + T])
        start += T
        cache.seqlens += T


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cuda_half_close_to_float32(pair, dtype):
    _, hf, _, cfg = pair
    m32 = Transformer(cfg, _hf_state(hf), device="cuda")
    m16 = Transformer(cfg, _hf_state(hf), dtype=dtype, device="cuda")
    seq = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(6)).to("cuda")
    c32 = KVCache(cfg, 2, 16, device="cuda")
    c16 = KVCache(cfg, 2, 16, dtype=dtype, device="cuda")
    l32, _ = m32(seq, c32)
    l16, h16 = m16(seq, c16)
    assert l16.dtype == torch.float32 and h16.dtype == dtype and torch.isfinite(l16).all()
    err = (l16 - l32).abs().max().item()
    assert err <= 0.05 * l32.abs().max().item(), err


@pytest.mark.cuda
def test_cuda_graph_capture_block_decode(pair):
    """One captured forward replayed over a growing cache (rows + logits_slots) equals HF."""
    _, hf, _, cfg = pair
    model = Transformer(cfg, _hf_state(hf), device="cuda")
    gen = torch.Generator().manual_seed(7)
    T, steps = 4, 5
    a = torch.randint(0, VOCAB, (3 + T * steps,), generator=gen).tolist()
    b = torch.randint(0, VOCAB, (8 + T * steps,), generator=gen).tolist()
    ref_a, _ = _hf_full(hf, a)
    ref_b, _ = _hf_full(hf, b)
    cache = KVCache(cfg, 2, 40, device="cuda")
    rows = torch.tensor([1, 0], dtype=torch.int32, device="cuda")
    model(torch.tensor([a[:3]], device="cuda"), cache, rows=rows[:1])
    model(torch.tensor([b[:8]], device="cuda"), cache, rows=rows[1:])
    cache.seqlens.copy_(torch.tensor([8, 3], dtype=torch.int32))
    tokens = torch.zeros(2, T, dtype=torch.int64, device="cuda")
    slots = torch.tensor([[0, 3], [2, 1]], device="cuda")
    # Warm up on a side stream (allocator, lazy init), then capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        model(tokens, cache, rows=rows, logits_slots=slots)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        logits, hidden = model(tokens, cache, rows=rows, logits_slots=slots)
    for s in range(steps):
        pa, pb = 3 + T * s, 8 + T * s
        tokens.copy_(torch.tensor([a[pa : pa + T], b[pb : pb + T]]))
        graph.replay()
        got = logits.cpu()
        _close(got[0], ref_a[pa : pa + T][slots[0].cpu()])
        _close(got[1], ref_b[pb : pb + T][slots[1].cpu()])
        cache.seqlens += T  # commit on the device, no host round trip
