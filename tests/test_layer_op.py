"""ops.decoder_layer_ (one quantized CPU decoder layer per op call): bitwise the model's op-by-op
layer (whose ops are each tested against float64 references), on a small random layer and on the
embedded SmolLM2 with and without its adapter, on every CPU path; argument errors write nothing."""

import pytest
import torch

from fluid_rt import ops

H, HQ, HKV, D, INTER = 64, 2, 1, 32, 96
OUTS = [(HQ + 2 * HKV) * D, H, 2 * INTER, H]
INS = [H, HQ * D, H, INTER]
PARTS = [[HQ * D, HKV * D, HKV * D], [H], [INTER, INTER], [H]]  # the LoRA B splits (out_parts)


def packed_weight(out_features, in_features, gen):
    q = torch.randint(0, 16, (out_features, in_features), generator=gen, dtype=torch.uint8)
    d = torch.rand(out_features, in_features // 32, generator=gen) * 0.02
    m = -8 * d + torch.rand(d.shape, generator=gen) * 1e-3
    return ops.quant_pack(q, d, m, ops.FORMATS["u4f32"])


def tiny_layer(seed=0, dtype=torch.float32, bias=False):
    gen = torch.Generator().manual_seed(seed)
    weights = [packed_weight(o, i, gen) for o, i in zip(OUTS, INS)]
    biases = [(torch.randn(o, generator=gen) * 0.1).to(dtype) if bias else None for o in OUTS]
    fmt = ops.FORMATS["u4f32"]
    lns = [(1 + 0.1 * torch.randn(H, generator=gen)).to(dtype) for _ in range(2)]
    return dict(ln_in=lns[0], ln_post=lns[1], projections=(weights, [fmt] * 4, list(OUTS), biases))


def layer_inputs(B=2, T=3, S=16, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H, generator=gen).to(dtype)
    delta = torch.randn(B, T, H, generator=gen).to(dtype)
    angles = torch.rand(B, T, D, generator=gen) * 6
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    kc = torch.randn(B, S, HKV, D, generator=gen).to(dtype)
    vc = torch.randn(B, S, HKV, D, generator=gen).to(dtype)
    seqlens = torch.tensor([5, 0][:B], dtype=torch.int32)
    return x, delta, cos, sin, kc, vc, seqlens


def op_by_op(layer, x, delta, cos, sin, kc, vc, seqlens, lora=None, batch_idx=None):
    """The model's layer written out as its eight op calls."""
    weights, fmts, outs, biases = layer["projections"]

    def proj(i, inp):
        extra = None if lora is None else (lora[0], lora[1][i], lora[2][i], PARTS[i])
        return ops.quant_linear(inp, weights[i], fmts[i], outs[i], biases[i], i == 3, extra)

    B, T = x.shape[:2]
    h = ops.rms_norm(x, layer["ln_in"], 1e-5, delta)
    heads = proj(0, h).view(B, T, HQ + 2 * HKV, D)
    qk = heads.narrow(2, 0, HQ + HKV)
    ops.rope_(qk, cos, sin)
    attn = ops.causal_attention(
        qk.narrow(2, 0, HQ),
        kc,
        vc,
        seqlens,
        qk.narrow(2, HQ, HKV),
        heads.narrow(2, HQ + HKV, HKV),
        cache_batch_idx=batch_idx,
    )
    h2 = ops.rms_norm(x, layer["ln_post"], 1e-5, proj(1, attn.reshape(B, T, HQ * D)))
    return proj(3, proj(2, h2))


def lora_factors(rows, seed=3):
    gen = torch.Generator().manual_seed(seed)
    a_t, b_t = [], []
    for i, p in enumerate(PARTS):
        r = 4 * len(p)
        a_t.append(torch.randn(INS[i], r, generator=gen) * 0.1)
        b_t.append(ops.lora_pack_b(torch.randn(4, sum(p), generator=gen) * 0.1, p))
    return rows, a_t, b_t


def run_fused(layer, x, delta, cos, sin, kc, vc, seqlens, lora=None, batch_idx=None):
    return ops.decoder_layer_(
        x, delta, layer["ln_in"], layer["ln_post"], 1e-5, layer["projections"], cos, sin, kc, vc, seqlens,
        batch_idx, HQ, HKV, lora,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("variant", ["plain", "bias", "lora", "no mask rows", "cache rows"])
def test_tiny_layer_is_bitwise_its_op_calls(matmul_path, dtype, variant):
    """Biases; the adapter's LoRA at some rows; its factors with no mask row (the op-by-op layer
    then makes plain calls); rows reading and writing other cache rows (cache_batch_idx)."""
    layer = tiny_layer(dtype=dtype, bias=variant == "bias")
    lora = {
        "lora": lora_factors(torch.tensor([1, 4, 5])),
        "no mask rows": lora_factors(torch.tensor([]).long()),
    }
    a = layer_inputs(dtype=dtype)
    if variant == "cache rows":  # three cache rows, the call's two rows in rows 2 and 0
        gen = torch.Generator().manual_seed(9)
        a = (*a[:4], *(torch.randn(3, 16, HKV, D, generator=gen).to(dtype) for _ in range(2)), a[6])
    idx = torch.tensor([2, 0], dtype=torch.int32) if variant == "cache rows" else None
    b = [t.clone() for t in a]
    want = op_by_op(layer, *a, lora=lora.get(variant) if variant == "lora" else None, batch_idx=idx)
    got = run_fused(layer, *b, lora=lora.get(variant), batch_idx=idx)
    for name, u, v in zip(
        ("out", "x", "k_cache", "v_cache"), (want, a[0], a[4], a[5]), (got, b[0], b[4], b[5])
    ):
        assert torch.equal(u, v), name


def _with_factor(lora, i, a_t=None, b_t=None):
    rows, a, b = lora
    a, b = list(a), list(b)
    a[i] = a[i] if a_t is None else a_t
    b[i] = b[i] if b_t is None else b_t
    return rows, a, b


def test_errors_write_nothing():
    layer = tiny_layer()
    x, delta, cos, sin, kc, vc, seqlens = layer_inputs()
    before = [t.clone() for t in (x, kc, vc)]
    weights, fmts, outs, biases = layer["projections"]
    bad = {
        "weights, formats, biases: expected 4": dict(projections=(weights[:3], fmts, outs, biases)),
        "weights: o expected": dict(projections=([weights[0], weights[0], *weights[2:]], fmts, outs, biases)),
        "formats: qkv's 9": dict(projections=(weights, [9, *fmts[1:]], outs, biases)),
        "out_features: expected": dict(projections=(weights, fmts, [outs[0], 32, *outs[2:]], biases)),
        "heads_q, heads_kv": dict(heads=(3, 2)),
        "cache_seqlens: row 0": dict(seqlens=torch.tensor([14, 0], dtype=torch.int32)),
        "rows: index 6 at position 0": dict(lora=lora_factors(torch.tensor([6]))),
        "rows: index 1 appears twice": dict(lora=lora_factors(torch.tensor([1, 1]))),
        "a_t": dict(lora=_with_factor(lora_factors(torch.tensor([1])), 1, a_t=torch.zeros(8, 4))),
        "b_t": dict(lora=_with_factor(lora_factors(torch.tensor([1])), 2, b_t=torch.zeros(3, 4, 64))),
        "lora_a_t, lora_b: expected 4": dict(lora=lora_factors(torch.tensor([1]))[:2] + ([],)),
        "lora_rows: given without": dict(lora=(torch.tensor([1]), [], [])),
        "delta": dict(delta=delta[:, :2]),
        "cache_batch_idx: entries 0 and 1": dict(batch_idx=torch.tensor([1, 1], dtype=torch.int32)),
        "k_cache": dict(kc=kc.bfloat16()),
        "cos": dict(cos=cos[:, :, :16].contiguous()),
        "memory": dict(kc=x.view(2, 6, 1, 32), vc=torch.zeros(2, 6, 1, 32)),
        "ln_in": dict(ln_in=layer["ln_in"][:32]),
    }
    for match, change in bad.items():
        defaults = dict(delta=delta, seqlens=seqlens, heads=(HQ, HKV), lora=None, batch_idx=None)
        args = dict(layer, kc=kc, vc=vc, cos=cos, **defaults) | change
        with pytest.raises(ValueError, match=match):
            ops.decoder_layer_(
                x, args["delta"], args["ln_in"], args["ln_post"], 1e-5, args["projections"], args["cos"], sin,
                args["kc"], args["vc"], args["seqlens"], args["batch_idx"], *args["heads"], args["lora"],
            )  # fmt: skip
        for t, t0 in zip((x, kc, vc), before):
            assert torch.equal(t, t0), match


def test_opcheck():
    layer = tiny_layer()
    x, delta, cos, sin, kc, vc, seqlens = layer_inputs()
    weights, fmts, outs, biases = layer["projections"]
    rows, a_t, b_t = lora_factors(torch.tensor([0, 2]))
    args = (x, delta, layer["ln_in"], layer["ln_post"], 1e-5, weights, fmts, outs, biases, cos, sin, kc, vc,
            seqlens, None, HQ, HKV, rows, a_t, b_t)  # fmt: skip
    torch.library.opcheck(
        torch.ops.fluid_rt.decoder_layer_.default, args, test_utils=("test_schema", "test_faketensor")
    )


# ---- the embedded SmolLM2: the model's forwards with and without the op -------------------------


@pytest.fixture(scope="module", params=["adapter", "base"])
def smol(request):
    import fluid_rt
    from fluid_rt.weights.gguf import default_model_path

    try:
        default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return fluid_rt.load_model() if request.param == "adapter" else fluid_rt.load_model(adapter=None)


def forwards(loaded, fuse):
    """A prefill of two rows, then decode-like steps of widths 1..7 (MASK inputs from slot 2 on,
    so an adapter's LoRA runs at some rows). Returns every output and the cache."""
    model = loaded.model
    model.fuse_layers = fuse
    gen = torch.Generator().manual_seed(5)
    cache = model.new_cache(2, 128)
    mask = loaded.fluid.mask_token_id if loaded.fluid.mask_token_id is not None else 16
    outs = []
    for T in (20, 1, 7, 3):
        tokens = torch.randint(100, 40000, (2, T), generator=gen)
        tokens[:, 2:] = mask if T < 20 else tokens[:, 2:]
        outs += list(model(tokens, cache))
        cache.seqlens[:2] += T
    model.fuse_layers = True
    return outs, cache


@pytest.mark.slow
def test_smollm2_forwards_are_bitwise_with_and_without_the_op(smol):
    """On the path in use (the small layer above covers every path; the whole model on the scalar
    portable path would take a minute)."""
    assert smol.model._fused_plans(1, torch.zeros(1, dtype=torch.int32)) is not None
    with torch.no_grad():
        (fused, fc), (plain, pc) = forwards(smol, True), forwards(smol, False)
    for i, (a, b) in enumerate(zip(fused, plain)):
        assert torch.equal(a, b), i
    assert torch.equal(fc.k, pc.k) and torch.equal(fc.v, pc.v)


def test_float_models_keep_the_op_by_op_layer():
    from fluid_rt.config import ModelConfig, expected_tensor_shapes
    from fluid_rt.layer_plan import layer_plans
    from fluid_rt.model import Transformer

    cfg = ModelConfig(
        family="llama", vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=2,
        num_kv_heads=1, head_dim=32, max_position_embeddings=128,
    )  # fmt: skip
    state = {n: torch.randn(s) * 0.2 for n, s in expected_tensor_shapes(cfg).items()}
    model = Transformer(cfg, state)
    assert layer_plans(model) is None and model._fused_plans(1, torch.zeros(1, dtype=torch.int32)) is None


def test_row_packed_forwards_keep_the_op_by_op_layer(smol, monkeypatch):
    """Rows of different widths packed into one sequence attend per row (RowPacking), which the op
    does not: such forwards run op by op, the others through the op, one call per layer."""
    calls = []
    real = ops.decoder_layer_
    monkeypatch.setattr(ops, "decoder_layer_", lambda *args: calls.append(1) or real(*args))
    model = smol.model
    tokens = torch.randint(100, 40000, (2, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model(tokens, model.new_cache(2, 16), widths=[4, 2])
        assert not calls
        model(tokens, model.new_cache(2, 16))
    assert len(calls) == model.cfg.num_layers
