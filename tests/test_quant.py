"""Quantized GGUF weights on the CPU (``ops.quant_*``, ``fluid_rt.qlinear``, quantized loading).

References are independent of the kernels: the weights come from ``gguf``'s own dequantization
(``gguf.quants.dequantize``) and products are taken in float64.

Tolerances. The kernel quantizes each activation row per block b of 32 values:
``d_b = max|x_b| / 127``, ``xq_k = round(x_k / d_b)``, so ``x_k = d_b xq_k + e_k`` with
``|e_k| <= d_b / 2`` (no clamping: ``|x_k / d_b| <= 127``). It then computes
``sum_b d_b sum_{k in b} w_k xq_k`` with exact integer dot products and float32 scaling and sums.
Hence, for output (m, n):

* against the float64 product ``sum_k w_nk x_mk``:
  ``|err| <= sum_b (d_b / 2) sum_{k in b} |w_nk|  +  rounding``;
* against float64 ``sum_b d_b sum_{k in b} w_nk xq_k`` with xq formed as the kernel does (the
  contract of csrc/quant/params.h), only float32 rounding remains: each block adds a scale product,
  a conversion-free int (|dot| < 2^24), a product and a sum, each rounded by at most 2^-24
  relative, and the running sum over nb blocks at most nb roundings, so
  ``|err| <= (nb + 4) 2^-23 sum_b d_b sum_k |w_nk xq_k|`` (the "rounding" term above too).

The second check is tight enough to catch any wrong quant, scale or column; the first says what
activation quantization costs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import matmul_paths, on_cpu_path

import fluid_rt
from fluid_rt import ops
from fluid_rt.cpu_isa import amx_enabled, use_amx
from fluid_rt.qlinear import QuantLinear
from fluid_rt.weights.gguf_quant import QUANT_TYPES, QuantWeight

gguf = pytest.importorskip("gguf")
from gguf.quants import dequantize, quantize  # noqa: E402  (after the importorskip)

TYPES = list(QUANT_TYPES)
# in_features per type: an odd number of blocks (13 x 32), or of K-quant super-blocks (3 x 256).
K_OF = {"Q8_0": 416, "Q4_0": 416, "Q4_1": 416, "Q4_K": 768, "Q6_K": 768}


def quantized_weight(qtype: str, n: int, k: int, seed: int) -> QuantWeight:
    """A random [n, k] weight in GGUF blocks: quantized by ``gguf.quants.quantize`` where gguf can,
    else random K-quant blocks with sane float16 scales (every other byte pattern is valid)."""
    rng = np.random.default_rng(seed)
    kind = gguf.GGMLQuantizationType[qtype]
    try:
        raw = quantize(rng.standard_normal((n, k)).astype(np.float32) * 0.1, kind)
    except NotImplementedError:
        per, nbytes = QUANT_TYPES[qtype]
        raw = rng.integers(0, 256, size=(n, k // per, nbytes), dtype=np.uint8)
        offsets = {"Q4_K": (0, 2), "Q6_K": (208,)}[qtype]
        for off in offsets:
            scale = rng.uniform(1e-4, 2e-3, size=(n, k // per)).astype(np.float16)
            raw[:, :, off : off + 2] = scale.view(np.uint8).reshape(n, k // per, 2)
        raw = raw.reshape(n, -1)
    return QuantWeight.from_gguf(qtype, raw, (n, k))


def reference_weight(w: QuantWeight) -> torch.Tensor:
    ((qtype, raw),) = w.segments
    values = dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(w.shape)
    return torch.from_numpy(values.astype(np.float64))


def quantize_like_kernel(x: torch.Tensor):
    """(d [M, nb] float64, xq [M, K] float64): float32 math as in csrc/quant/activations.h."""
    xb = x.float().reshape(x.shape[0], -1, 32)
    amax = xb.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))  # float32
    xq = torch.round(xb * inv).clamp(-127, 127)  # half-to-even, like nearbyint
    return (amax / 127.0).double().squeeze(-1), xq.reshape(x.shape).double()


def check_against_references(y, x, w64, bias=None):
    """Both bounds of the module docstring, per output."""
    K = x.shape[1]
    d, xq = quantize_like_kernel(x)
    dk = d.repeat_interleave(32, dim=1)
    emulated = (dk * xq) @ w64.T
    exact = x.double() @ w64.T
    if bias is not None:
        emulated, exact = emulated + bias.double(), exact + bias.double()
    nb = K // 32
    rounding = (nb + 4) * 2.0**-23 * ((dk * xq).abs() @ w64.abs().T) + 1e-30
    if bias is not None:
        rounding = rounding + 2.0**-23 * (emulated.abs() + bias.double().abs())
    quant = 0.5 * d @ w64.abs().reshape(w64.shape[0], nb, 32).sum(-1).T
    y = y.double()
    assert ((y - emulated).abs() <= rounding).all(), (y - emulated).abs().max().item()
    assert ((y - exact).abs() <= quant * 1.0001 + 2 * rounding).all(), (y - exact).abs().max().item()


@pytest.mark.parametrize("qtype", TYPES)
def test_rows_dequantize_exactly_as_gguf(qtype):
    w = quantized_weight(qtype, 37, K_OF[qtype], seed=1)
    ql = QuantLinear(w)
    ref = reference_weight(w).float()
    ids = torch.tensor([[36, 0, 8], [7, 7, 35]])
    assert torch.equal(ql.rows(ids), ref[ids])
    assert torch.equal(ql.rows(torch.arange(37)), ref)


@pytest.mark.parametrize("qtype", TYPES)
def test_matmul_all_row_counts(matmul_path, qtype):
    """Rows 1..33 against both references; each row bitwise the same in every call."""
    N, K = 37, K_OF[qtype]
    w = quantized_weight(qtype, N, K, seed=2)
    ql = QuantLinear(w)
    w64 = reference_weight(w)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(33, K, generator=gen) * torch.rand(33, 1, generator=gen) * 4
    x[5, 64:96] = 0  # an all-zero block
    full = ql(x)
    check_against_references(full, x, w64)
    for m in range(1, 33):
        part = ql(x[:m])
        assert torch.equal(part, full[:m]), m
    shifted = ql(x[7:20])  # rows in other tile positions
    assert torch.equal(shifted, full[7:20])


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q6_K"])
def test_bias_silu_and_mul_and_leading_dims(matmul_path, qtype):
    N, K = 21, K_OF[qtype]
    w = quantized_weight(qtype, N, K, seed=4)
    w64 = reference_weight(w)
    bias = torch.randn(N)
    ql = QuantLinear(w, bias)
    gen = torch.Generator().manual_seed(5)
    gate_up = torch.randn(2, 3, 2 * K, generator=gen)
    y = ql.silu_and_mul(gate_up)
    assert y.shape == (2, 3, N)
    g, u = gate_up.double().chunk(2, -1)
    h = (g * torch.sigmoid(g) * u).reshape(6, K)
    # silu in float32 differs from float64 by a few ulps, which may move an xq by one step at a
    # rounding tie: only the first bound (plus float32 slack) holds exactly here.
    exact = h @ w64.T + bias.double()
    d, _ = quantize_like_kernel(h)
    quant = 0.5 * d @ w64.abs().reshape(N, K // 32, 32).sum(-1).T
    slack = 1e-5 * (h.abs() @ w64.abs().T) + 1e-6
    assert ((y.reshape(6, N).double() - exact).abs() <= quant * 1.001 + slack).all()
    # a column slice of a wider matrix (rows at one stride) is read in place
    wide = torch.randn(4, K + 8)
    xs = wide[:, 3 : 3 + K]
    assert torch.equal(ql(xs), ql(xs.contiguous()))


def test_bfloat16_rows_round_once(matmul_path):
    """bfloat16 in and out: the float32 result of the rounded inputs, rounded once."""
    w = quantized_weight("Q4_1", 19, 416, seed=6)
    ql = QuantLinear(w)
    x = torch.randn(5, 416).bfloat16()
    assert torch.equal(ql(x), ql(x.float()).bfloat16())


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1"])
def test_nan_inf_and_zero_rows_give_nan_inf_and_zero_not_garbage(matmul_path, qtype):
    w = quantized_weight(qtype, 9, 64, seed=7)
    x = torch.randn(9, 64)  # 9 rows: the AMX tiles' threshold on an AMX CPU
    x[1, 40] = float("nan")
    x[2, 3] = float("inf")
    x[3] = 0.0
    y = QuantLinear(w)(x)
    assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()
    assert not torch.isfinite(y[2]).any()
    assert torch.equal(y[3], torch.zeros(9))


HAS_AMX = fluid_rt.build_info()["cpu_features"]["amx_int8"]


@pytest.mark.skipif(not HAS_AMX, reason="this CPU (or its OS) gives no AMX-INT8 tiles")
@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_amx_tiles_give_the_vnni_bits(qtype, dtype):
    """On an AMX CPU the avx512 path runs calls of 8 rows or more on AMX tiles (csrc/quant/amx.h):
    bit for bit the AVX512-VNNI code's results, for every row count up to three row tiles, with 5
    column groups (two tile pairs and a lone group, which runs the VNNI tile) and 6, bias and
    silu_and_mul. (The tiles also meet the float64 references: every other test here runs on them
    at 8+ rows on such a CPU.)"""
    gen = torch.Generator().manual_seed(11)
    K = K_OF[qtype]
    for N in (37, 48):
        ql = QuantLinear(quantized_weight(qtype, N, K, seed=N), torch.randn(N, generator=gen).to(dtype))
        x = (torch.randn(40, 2 * K, generator=gen) * 3).to(dtype)
        with fluid_rt.use_cpu_isa("avx512"):
            with use_amx(False):
                plain, swiglu = ql(x[:, :K]), ql.silu_and_mul(x)
            assert amx_enabled()
            for m in (1, 3, 4, 5, 7, 8, 13, 16, 17, 21, 33, 40):
                assert torch.equal(ql(x[:m, :K]), plain[:m]), (N, m)
                assert torch.equal(ql.silu_and_mul(x[:m]), swiglu[:m]), (N, m)
            assert torch.equal(ql(x[9:30, :K]), plain[9:30])


@pytest.mark.parametrize("qtype", TYPES)
def test_x86_paths_give_the_same_bits(qtype):
    """avx2 (maddubs + madd, or AVX-VNNI), avx512 (AVX512-VNNI, or the avx2 code) and AMX tiles add
    the same integers and share their float steps, so on an x86 CPU they agree bit for bit (the
    portable path does its float steps unfused)."""
    paths = [p for p in matmul_paths() if p != "portable"]
    if len(paths) < 2:
        pytest.skip("one x86 vector path here")
    K = K_OF[qtype]
    ql = QuantLinear(quantized_weight(qtype, 37, K, seed=3), torch.randn(37))
    x = torch.randn(21, 2 * K) * 2
    results = []
    for path in paths:
        with on_cpu_path(path):
            results.append([ql(x[:m, :K]) for m in (1, 5, 21)] + [ql.silu_and_mul(x[:7])])
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_amx_switch():
    """use_amx toggles the tiles and restores the setting; on a CPU without them, asking is an error."""
    before = amx_enabled()
    with use_amx(False):
        assert not amx_enabled()
    assert amx_enabled() == before == HAS_AMX
    if not HAS_AMX:
        with pytest.raises(ValueError, match="AMX"), use_amx(True):
            pass


def test_q4_0_with_huge_scale_keeps_exact_mins():
    """Q4_0's m = -8 d overflows float16 for |d| > 8188: such a tensor goes to float32 scales."""
    raw = quantize(
        np.random.default_rng(8).standard_normal((8, 32)).astype(np.float32), gguf.GGMLQuantizationType.Q4_0
    )
    raw[3, 0:2] = np.array([30000.0], np.float16).view(np.uint8)
    w = QuantWeight.from_gguf("Q4_0", raw, (8, 32))
    ql = QuantLinear(w)
    assert ql.parts[0][0] == ops.FORMATS["u4f32"]
    assert torch.equal(ql.rows(torch.arange(8)), reference_weight(w).float())


def test_argument_errors():
    w = quantized_weight("Q4_1", 10, 64, seed=9)
    fmt, packed, n = QuantLinear(w).parts[0]
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="x: the last dim"):
        ops.quant_linear(torch.randn(2, 96), packed, fmt, n)
    with pytest.raises(ValueError, match="x: expected float32 or bfloat16"):
        ops.quant_linear(x.double(), packed, fmt, n)
    with pytest.raises(ValueError, match="packed: expected shape"):
        ops.quant_linear(x, packed, fmt, 17)
    with pytest.raises(ValueError, match="packed: expected shape"):
        ops.quant_linear(x, packed, ops.FORMATS["s8f16"], n)
    with pytest.raises(ValueError, match="format: expected"):
        ops.quant_linear(x, packed, 7, n)
    with pytest.raises(ValueError, match="bias: dim 0"):
        ops.quant_linear(x, packed, fmt, n, torch.randn(3))
    with pytest.raises(ValueError, match="rows: entry 1 is 10"):
        ops.quant_dequantize_rows(packed, fmt, n, torch.tensor([0, 10]))
    q = torch.zeros(8, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="d: scale #0 is not exactly a float16"):
        ops.quant_pack(q, torch.full((8, 1), 0.1), torch.zeros(8, 1), ops.FORMATS["u4f16"])
    with pytest.raises(ValueError, match="q: expected int8"):
        ops.quant_pack(q, torch.ones(8, 1), None, ops.FORMATS["s8f16"])
    with pytest.raises(ValueError, match="m: format 2 takes no"):
        ops.quant_pack(q.to(torch.int8), torch.ones(8, 1), torch.ones(8, 1), ops.FORMATS["s8f16"])
    with pytest.raises(ValueError, match="K a positive multiple of 32"):
        ops.quant_pack(torch.zeros(8, 48, dtype=torch.uint8), torch.ones(8, 1), torch.ones(8, 1), 0)


def test_argument_table_rules():
    """The rules quant's ArgSpec tables state (bindings/quant.cpp): dtypes, the one float dtype of
    x and bias, ranks, strides, and sizes bound by one argument and checked on the others."""
    w = quantized_weight("Q4_1", 10, 64, seed=9)
    fmt, packed, n = QuantLinear(w).parts[0]
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match=r"packed: expected dtype Byte, got Char"):
        ops.quant_linear(x, packed.view(torch.int8), fmt, n)
    with pytest.raises(ValueError, match=r"packed: expected a 3-D tensor"):
        ops.quant_linear(x, packed.flatten(), fmt, n)
    with pytest.raises(ValueError, match=r"bias: expected dtype Float, got BFloat16"):
        ops.quant_linear(x, packed, fmt, n, torch.zeros(n, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"x: the leading dims must collapse to one row stride"):
        ops.quant_linear(torch.randn(3, 2, 64).transpose(0, 1), packed, fmt, n)
    with pytest.raises(ValueError, match=r"rows: expected dtype Long, got Int"):
        ops.quant_dequantize_rows(packed, fmt, n, torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match=r"q: expected uint8 or int8, got Float"):
        ops.quant_pack(torch.zeros(8, 32), torch.ones(8, 1), None, ops.FORMATS["s8f16"])
    with pytest.raises(ValueError, match=r"d: dim 0 \(out_features, as q\) must be 8"):
        ops.quant_pack(torch.zeros(8, 32, dtype=torch.int8), torch.ones(7, 1), None, ops.FORMATS["s8f16"])
    with pytest.raises(ValueError, match=r"m: dim 1 \(K / 32\) must be 1"):
        ops.quant_pack(torch.zeros(8, 32, dtype=torch.uint8), torch.ones(8, 1), torch.ones(8, 2), 0)
    # A column slice of a wider x is rows at one stride: taken as is, same result as a copy.
    wide = torch.randn(3, 80)
    torch.testing.assert_close(
        ops.quant_linear(wide[:, 8:72], packed, fmt, n),
        ops.quant_linear(wide[:, 8:72].contiguous(), packed, fmt, n),
        rtol=0,
        atol=0,
    )


def test_opcheck():
    w = quantized_weight("Q8_0", 12, 64, seed=10)
    fmt, packed, n = QuantLinear(w).parts[0]
    torch.library.opcheck(
        torch.ops.fluid_rt.quant_linear.default,
        (torch.randn(3, 64), packed, fmt, n),
        test_utils=("test_schema", "test_faketensor"),
    )
    torch.library.opcheck(
        torch.ops.fluid_rt.quant_dequantize_rows.default,
        (packed, fmt, n, torch.tensor([1, 2])),
        test_utils=("test_schema", "test_faketensor"),
    )


@pytest.mark.parametrize("silu_and_mul", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_fused_lora_is_bitwise_the_two_ops(matmul_path, silu_and_mul, mixed):
    """``lora=`` (the gated adapter's delta in the same call) equals ``quant_linear`` then
    ``gated_lora_``, bit for bit, rows outside ``rows`` untouched; a mixed-type weight (one kernel
    call per type) applies it after joining the parts."""
    parts, K = (64, 21, 21), 96
    w = quantized_weight("Q4_1", sum(parts), K, seed=13)
    if mixed:
        w = QuantWeight.cat([quantized_weight("Q4_K", 64, 256, 14), quantized_weight("Q6_K", 42, 256, 15)])
        K = 256
    ql = QuantLinear(w, torch.randn(sum(parts)))
    gen = torch.Generator().manual_seed(16)
    x = torch.randn(2, 5, (2 if silu_and_mul else 1) * K, generator=gen)
    a_t = torch.randn(K, 3 * 4, generator=gen).bfloat16()
    b_t = ops.lora_pack_b(torch.randn(4, sum(parts), generator=gen).bfloat16(), parts)
    rows = torch.tensor([7, 1, 4])
    run = ql.silu_and_mul if silu_and_mul else ql
    want = run(x)
    ops.gated_lora_(want, x, rows, a_t, b_t, silu_and_mul, parts)
    got = run(x, (rows, a_t, b_t, parts))
    assert torch.equal(got, want)
    untouched = [r for r in range(10) if r not in rows.tolist()]
    assert torch.equal(got.view(10, -1)[untouched], run(x).view(10, -1)[untouched])


def test_fused_lora_arguments_are_checked():
    w = quantized_weight("Q8_0", 64, 64, seed=17)
    fmt, packed, n = QuantLinear(w).parts[0]
    x, rows = torch.randn(3, 64), torch.tensor([1])
    a_t, b_t = torch.randn(64, 4), ops.lora_pack_b(torch.randn(4, 64))
    with pytest.raises(ValueError, match="all three"):
        torch.ops.fluid_rt.quant_linear(x, packed, fmt, n, None, False, rows, a_t, None)
    with pytest.raises(ValueError, match="lora_out_parts without"):
        torch.ops.fluid_rt.quant_linear(x, packed, fmt, n, None, False, None, None, None, [32, 32])
    with pytest.raises(ValueError, match="outside"):
        ops.quant_linear(x, packed, fmt, n, lora=(torch.tensor([3]), a_t, b_t, ()))
    with pytest.raises(ValueError, match="b_t"):
        ops.quant_linear(x, packed, fmt, n, lora=(rows, a_t, torch.randn(4, 64), ()))
    torch.library.opcheck(
        torch.ops.fluid_rt.quant_linear.default,
        (x, packed, fmt, n, None, False, rows, a_t, b_t, []),
        test_utils=("test_schema", "test_faketensor"),
    )


def test_mixed_types_fuse_by_rows():
    """A fused q/k/v of a K-quant file mixes types: one kernel call per type, outputs side by side."""
    a, b = quantized_weight("Q4_K", 16, 256, seed=11), quantized_weight("Q6_K", 9, 256, seed=12)
    fused = QuantWeight.cat([a, b, a])
    assert fused.shape == (41, 256) and [s[0] for s in fused.segments] == ["Q4_K", "Q6_K", "Q4_K"]
    bias = torch.randn(41)
    x = torch.randn(3, 256)
    got = QuantLinear(fused, bias)(x)
    want = torch.cat([QuantLinear(a)(x), QuantLinear(b)(x), QuantLinear(a)(x)], -1) + bias
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Loading: a tiny quantized GGUF keeps its blocks, rows in HF order
# ---------------------------------------------------------------------------------------------


def test_quantized_load_matches_float_load(tmp_path):
    from test_gguf import tiny_hf_weights, tiny_tokenizer_fields, write_tiny_gguf

    from fluid_rt.weights import gguf as fg

    Q = gguf.GGMLQuantizationType
    sd = tiny_hf_weights(len(tiny_tokenizer_fields()[0]), np.random.default_rng(13), tied=True)
    kinds = [Q.Q8_0, Q.Q4_0, Q.Q4_1]
    quant = {name: kinds[i % 3] for i, name in enumerate(n for n in sd if sd[n].ndim == 2)}
    quant["model.layers.1.mlp.up_proj.weight"] = Q.F16
    path = write_tiny_gguf(tmp_path / "tiny.gguf", sd, quant=quant)
    _, floats, _ = fg.load_gguf(str(path))
    _, state, _ = fg.load_gguf(str(path), quantized=True)
    assert set(state) == set(floats)
    for name, value in state.items():
        if quant.get(name) in kinds:
            assert isinstance(value, QuantWeight) and value.shape == floats[name].shape, name
            assert torch.equal(value.dequantize(), floats[name]), name  # q/k rows unpermuted too
        else:
            assert torch.equal(value, floats[name]), name


def test_other_quant_types_dequantize_with_a_warning(tmp_path):
    """Q5_0 has no kernel here: loaded as floats (gguf's dequantization), with a warning naming it."""
    from test_gguf import tiny_hf_weights, tiny_tokenizer_fields, write_tiny_gguf

    from fluid_rt.weights import gguf as fg

    Q = gguf.GGMLQuantizationType
    sd = tiny_hf_weights(len(tiny_tokenizer_fields()[0]), np.random.default_rng(14), tied=True)
    name = "model.layers.0.mlp.gate_proj.weight"
    path = write_tiny_gguf(
        tmp_path / "q5.gguf", sd, quant={name: Q.Q5_0, "model.layers.0.mlp.up_proj.weight": Q.Q8_0}
    )
    with pytest.warns(UserWarning, match=r"blk\.0\.ffn_gate\.weight has type Q5_0.*dequantized"):
        _, state, _ = fg.load_gguf(str(path), quantized=True)
    _, floats, _ = fg.load_gguf(str(path))
    assert torch.equal(state[name], floats[name])
    assert isinstance(state["model.layers.0.mlp.up_proj.weight"], QuantWeight)


# ---------------------------------------------------------------------------------------------
# The embedded SmolLM2 (Q4_1 layers, Q8_0 tied embedding / LM head)
# ---------------------------------------------------------------------------------------------


def _smol_path():
    from fluid_rt.weights.gguf import default_model_path

    try:
        return default_model_path()
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def smol_pair():
    from fluid_rt.loader import load_model

    path = _smol_path()
    return load_model(path, weights="quantized", mask_token_id=0), load_model(path, weights="float")


TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based inks and a wooden press adapted from wine making. "
    "Within fifty years, presses were operating in more than two hundred cities across Europe, and "
    "the price of books fell so far that reading spread well beyond monasteries and universities."
)


@pytest.mark.slow
def test_smollm2_quantized_logits_close_to_float(smol_pair):
    """Stated tolerance, on 66 tokens of English text: top-1 agrees on >= 90% of positions (95%
    measured), and where it differs the float model's own top-2 margin is < 1 logit; max |logit
    error| < 2.5 (measured ~1; logits span about +-30)."""
    quant, flt = smol_pair
    assert isinstance(quant.model.layers[0].qkv, QuantLinear) and isinstance(quant.model.embed, QuantLinear)
    assert quant.model.lm_head is quant.model.embed  # tied: one packed Q8_0 table
    tokens = torch.tensor([quant.tokenizer.encode(TEXT)])
    lq, _ = quant.model(tokens, quant.model.new_cache(1, 128))
    lf, _ = flt.model(tokens, flt.model.new_cache(1, 128))
    err = (lq - lf).abs().max().item()
    assert err < 2.5, err
    aq, af = lq[0].argmax(-1), lf[0].argmax(-1)
    assert (aq == af).float().mean().item() >= 0.9
    top2 = lf[0].topk(2, -1).values
    for t in torch.nonzero(aq != af).flatten().tolist():
        assert (top2[t, 0] - top2[t, 1]).item() < 1.0, t


@pytest.mark.slow
def test_smollm2_quantized_elastic_equals_quantized_ar(smol_pair):
    """Lossless elastic decoding on quantized weights: the same greedy tokens as quantized AR
    (both run the same kernels, whose rows do not depend on the forward's width)."""
    from fluid_rt.decode import DecodeConfig, Decoder

    quant, _ = smol_pair
    dec = Decoder(quant.model, mask_token_id=quant.config.vocab_size - 1)
    ids = quant.tokenizer.encode(TEXT)
    prompts = [ids[:40], ids[:7]]
    ar, _ = dec.generate(prompts, DecodeConfig(mode="ar", max_new_tokens=24))
    for horizon, threshold in (("fixed", 0.2), ("entropy", 0.5)):
        cfg = DecodeConfig(
            max_new_tokens=24,
            block_size=8,
            min_block=2,
            horizon=horizon,
            commit="confidence",
            threshold=threshold,
        )
        elastic, _ = dec.generate(prompts, cfg)
        for a, e in zip(ar, elastic):
            assert a.tokens == e.tokens, horizon


def test_unknown_weights_choice_is_rejected_before_loading():
    from fluid_rt.loader import load_model

    with pytest.raises(ValueError, match="weights: expected one of quantized, float"):
        load_model("/nonexistent.gguf", weights="int4")


def test_cli_weights_flag_reaches_load_model(monkeypatch):
    from fluid_rt import cli

    assert cli.build_parser().parse_args(["generate", "hi"]).weights == "quantized"
    args = cli.build_parser().parse_args(["generate", "hi", "--weights", "float"])
    seen = {}

    def fake_load_model(path, **kw):
        seen.update(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(cli, "load_model", fake_load_model)
    with pytest.raises(RuntimeError, match="stop"):
        cli._load(args)
    assert seen["weights"] == "float"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["generate", "hi", "--weights", "int4"])


@pytest.mark.slow
def test_smollm2_quantized_bfloat16_follows_float32(smol_pair):
    """A bfloat16 model on the same quantized weights: logits within bfloat16's rounding of the
    activations (max error < 2.5, top-1 agreement >= 85% on the text)."""
    from fluid_rt.loader import load_model

    quant, _ = smol_pair
    bf16 = load_model(quant.path, weights="quantized", dtype=torch.bfloat16)
    tokens = torch.tensor([quant.tokenizer.encode(TEXT)])
    l32, _ = quant.model(tokens, quant.model.new_cache(1, 128))
    l16, _ = bf16.model(tokens, bf16.model.new_cache(1, 128))
    assert (l32 - l16).abs().max().item() < 2.5
    assert (l32[0].argmax(-1) == l16[0].argmax(-1)).float().mean().item() >= 0.85
