"""fluid_rt.ops.pack_linear_weight / packed_linear (float32 and bfloat16, CPU) against float64
math, on every CPU path this machine supports (the ``cpu_isa`` fixture: portable, avx2, avx512)."""

import random

import pytest
import torch
import torch.nn.functional as F

import fluid_rt
from fluid_rt.ops import pack_linear_weight, packed_linear, unpack_linear_weight

DTYPES = [torch.float32, torch.bfloat16]


def activated(x, silu_and_mul):
    """The rows that are multiplied: x, or silu(gate) * up as torch computes it in x's dtype."""
    if not silu_and_mul:
        return x
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def reference(x, weight, bias=None, silu_and_mul=False):
    """float64 F.linear of the activated rows."""
    x = activated(x, silu_and_mul)
    return F.linear(x.double(), weight.double(), None if bias is None else bias.double())


def check_close(got, x, weight, bias=None, silu_and_mul=False):
    """The error bound of a K-term float32 sum, per element: |err| <= (K + 2) u sum_k |x_k w_k|
    (+ the bias's rounding). Rigorous for any summation order, so it never flakes; a wrong or
    missing term (about sum / K) is far outside it. silu_and_mul adds two float32 ulps of each
    activation (our silu's polynomial exp is about an ulp from torch's, which has its own
    rounding); bfloat16 adds the output's rounding (u = 2^-8 of |y|) and an ulp of each activation
    (our float32 silu may round to the neighbouring bfloat16 of torch's)."""
    want = reference(x, weight, bias, silu_and_mul)
    assert got.shape == want.shape and got.dtype == x.dtype
    a = activated(x, silu_and_mul).double()
    K, u = a.shape[-1], 2.0**-24
    abs_terms = F.linear(a.abs(), weight.double().abs())
    bound = (K + 2) * u * abs_terms
    if bias is not None:
        bound = bound + 2 * u * bias.double().abs()
    if silu_and_mul:
        bound = bound + 4 * u * abs_terms
    if x.dtype == torch.bfloat16:
        bound = bound + 2.0**-8 * want.abs() * (1 + 1e-6) + (2.0**-7 * abs_terms if silu_and_mul else 0)
    err = (got.double() - want).abs()
    assert (err <= bound + 1e-30).all(), (
        f"max error {err.max():.3g}, bound there {bound.flatten()[err.argmax()]:.3g}"
    )


# bfloat16 packs k in pairs, so its in_features are even (odd ones: test_bad_arguments_raise).
SIZES = [
    (dtype, K, N)
    for dtype in DTYPES
    for K, N in [(1, 1), (7, 5), (2, 3), (64, 32), (33, 65), (100, 96), (512, 1000)]
    if dtype == torch.float32 or K % 2 == 0
]


@pytest.mark.parametrize("M", [1, 2, 5, 6, 7, 12, 13, 17, 24, 25, 33, 70])
@pytest.mark.parametrize("dtype,K,N", SIZES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_matches_float64(matmul_path, dtype, M, K, N, with_bias):
    gen = torch.Generator().manual_seed(M * 1000 + K * 7 + N)
    x = torch.randn(M, K, generator=gen).to(dtype)
    weight = torch.randn(N, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(dtype) if with_bias else None
    packed = pack_linear_weight(weight)
    assert packed.shape == (N, K) and packed.is_contiguous() and packed.dtype == dtype
    check_close(packed_linear(x, packed, bias), x, weight, bias)


def test_packed_layout():
    """Panel p (columns 32 p ..) is [K, width] row-major at element 32 p K; the last is narrower."""
    weight = torch.randn(70, 9)
    flat = pack_linear_weight(weight).flatten()
    for p, width in enumerate((32, 32, 6)):
        panel = flat[32 * p * 9 : 32 * p * 9 + 9 * width].view(9, width)
        assert torch.equal(panel, weight[32 * p : 32 * p + width].t())


def test_packed_layout_bfloat16():
    """bfloat16 panel p is [K / 2, width, 2] at element 32 p K: k pairs interleaved per column."""
    weight = torch.randn(40, 6).bfloat16()
    flat = pack_linear_weight(weight).flatten()
    for p, width in enumerate((32, 8)):
        panel = flat[32 * p * 6 : 32 * p * 6 + 6 * width].view(3, width, 2)
        want = weight[32 * p : 32 * p + width].t().reshape(3, 2, width).transpose(1, 2)
        assert torch.equal(panel, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,K", [(1, 2), (32, 4), (70, 8), (100, 512), (5, 6)])
def test_unpack_round_trip(dtype, N, K):
    weight = torch.randn(N, K).to(dtype)
    assert torch.equal(unpack_linear_weight(pack_linear_weight(weight)), weight)


def test_any_weight_strides(matmul_path):
    """The weight may be a transposed or sliced view (packing reads it through its strides)."""
    base = torch.randn(40, 50)
    for weight in (base, base.t(), base[::2, 3:40], base.t()[5:, ::3]):
        x = torch.randn(3, weight.shape[1])
        check_close(packed_linear(x, pack_linear_weight(weight)), x, weight)


def test_leading_dims_and_row_strided_x(matmul_path):
    """x [..., K] with any leading dims, or a column slice of a wider matrix (one row stride)."""
    weight, bias = torch.randn(45, 64), torch.randn(45)
    packed = pack_linear_weight(weight)
    x = torch.randn(2, 3, 64)
    check_close(packed_linear(x, packed, bias), x, weight, bias)
    wide = torch.randn(2, 5, 100)
    x = wide[..., 10:74]
    check_close(packed_linear(x, packed, bias), x, weight, bias)
    empty = packed_linear(torch.randn(0, 64), packed, bias)
    assert empty.shape == (0, 45)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 4, 7, 13, 40])
def test_silu_and_mul_input(matmul_path, dtype, M):
    """silu_and_mul: the rows multiplied are silu(gate) * up of x = [gate, up]."""
    K, N = 76, 66
    gen = torch.Generator().manual_seed(M)
    x = (torch.randn(M, 2 * K, generator=gen) * 3).to(dtype)
    weight = torch.randn(N, K, generator=gen).to(dtype)
    bias = torch.randn(N, generator=gen).to(dtype)
    x_in = x.clone()
    y = packed_linear(x, pack_linear_weight(weight), bias, silu_and_mul=True)
    check_close(y, x, weight, bias, silu_and_mul=True)
    assert torch.equal(x, x_in)  # the input is not overwritten


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 3, 6, 19, 40])
def test_outputs_written_everywhere(matmul_path, dtype, M):
    """No output element is left unwritten: the result never depends on what memory held (every
    tile shape, a last panel of 5 columns, bfloat16 stores of 5-lane tails)."""
    weight, x = torch.randn(37, 20).to(dtype), torch.randn(M, 20).to(dtype)
    packed = pack_linear_weight(weight)
    for _ in range(3):  # fresh allocations after poisoning freed memory with NaN
        poison = torch.full((M, 37), float("nan"), dtype=dtype)
        del poison
        y = packed_linear(x, packed)
        assert torch.isfinite(y).all()
        check_close(y, x, weight)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_bitwise_independent_of_the_call(matmul_path, dtype):
    """A row's result is bit-identical whatever else is in the call, on each path (the contract in
    DEVELOPERS.md: a position's projections do not change with the width of the forward). The
    row counts cross every tile shape of every path (1..3, 4..6, 7..12 rows per tile, several
    tiles over k-chunks) and K is long enough for several chunks."""
    for N in (300, 310):  # last panels 12 and 22 columns wide (AMX: one half-tile, one and a bit)
        weight, bias = torch.randn(N, 1200).to(dtype), torch.randn(N).to(dtype)
        packed = pack_linear_weight(weight)
        x = torch.randn(70, 1200).to(dtype)
        full = packed_linear(x, packed, bias)
        check_close(full, x, weight, bias)
        for M in (1, 2, 3, 4, 6, 7, 12, 13, 17, 25, 33):
            assert torch.equal(packed_linear(x[:M], packed, bias), full[:M])
            assert torch.equal(packed_linear(x[M : M + 1], packed, bias), full[M : M + 1])
            assert torch.equal(packed_linear(x[M : 2 * M + 1], packed, bias), full[M : 2 * M + 1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_paths_agree(dtype):
    """Every path computes the same sums (float32 in k order, each path its own roundings): the
    paths agree with each other to float32 rounding (bfloat16: one output ulp)."""
    weight, bias = torch.randn(70, 34).to(dtype), torch.randn(70).to(dtype)
    packed = pack_linear_weight(weight)
    for M in (1, 5, 14, 30):
        x = torch.randn(M, 68).to(dtype)
        outs = {}
        for isa in fluid_rt._C.cpu_isas_supported():
            with fluid_rt.use_cpu_isa(isa):
                outs[isa] = packed_linear(x, packed, bias, silu_and_mul=True)
            check_close(outs[isa], x, weight, bias, silu_and_mul=True)
        first = next(iter(outs.values()))
        for out in outs.values():
            if dtype == torch.float32:
                torch.testing.assert_close(out, first, rtol=1e-5, atol=1e-5)
            else:
                torch.testing.assert_close(out, first, rtol=2**-7, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_opcheck_and_compile(dtype):
    weight, bias, x = (torch.randn(40, 24).to(dtype), torch.randn(40).to(dtype), torch.randn(5, 24).to(dtype))
    torch.library.opcheck(torch.ops.fluid_rt.pack_linear_weight.default, (weight,))
    packed = pack_linear_weight(weight)
    torch.library.opcheck(torch.ops.fluid_rt.unpack_linear_weight.default, (packed,))
    torch.library.opcheck(torch.ops.fluid_rt.packed_linear.default, (x, packed, bias, False))
    torch.library.opcheck(
        torch.ops.fluid_rt.packed_linear.default, (torch.randn(5, 48).to(dtype), packed, None, True)
    )

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(x, packed, bias):
        return packed_linear(x, packed, bias) * 2

    check_close(f(x, packed, bias) / 2, x, weight, bias)


def test_model_uses_packed_weights_on_the_cpu(matmul_path):
    from fluid_rt.model import Linear, cpu_packs

    w, b = torch.randn(20, 8), torch.randn(20)
    # float32 and bfloat16 run on the packed kernel on every path (it keeps rows independent of
    # the forward's width); float16 on torch's matmul
    assert cpu_packs(torch.float32) and cpu_packs(torch.bfloat16) and not cpu_packs(torch.float16)
    assert Linear(w, b).packed is not None
    assert Linear(w.bfloat16(), b.bfloat16()).packed is not None
    assert Linear(w.half(), b.half()).packed is None
    x = torch.randn(3, 8)
    gate_up = torch.randn(3, 16)
    for lin in (Linear(w, b), Linear(w, b, pack=False)):
        check_close(lin(x), x, w, b)
        check_close(lin.silu_and_mul(gate_up.clone()), gate_up, w, b, silu_and_mul=True)
    # bfloat16 beyond 32 rows too (two AMX row tiles of 16 on an AMX CPU)
    lin = Linear(w.bfloat16(), b.bfloat16(), pack=True)
    for rows in (1, 32, 33, 40):
        xb = torch.randn(rows, 8).bfloat16()
        check_close(lin(xb), xb, w.bfloat16(), b.bfloat16())
        gu = torch.randn(rows, 16).bfloat16()
        check_close(lin.silu_and_mul(gu.clone()), gu, w.bfloat16(), b.bfloat16(), silu_and_mul=True)


def _packed(n=10, k=4):
    return pack_linear_weight(torch.randn(n, k))


BAD = [
    ("weight dtype", lambda: pack_linear_weight(torch.ones(3, 4, dtype=torch.float64)), "weight"),
    ("weight fp16", lambda: pack_linear_weight(torch.ones(3, 4, dtype=torch.float16)), "weight"),
    ("weight bf16 odd K", lambda: pack_linear_weight(torch.ones(3, 5, dtype=torch.bfloat16)), "even"),
    ("unpack rank", lambda: unpack_linear_weight(torch.ones(2, 3, 4)), "packed"),
    ("unpack bf16 odd K", lambda: unpack_linear_weight(torch.ones(3, 5, dtype=torch.bfloat16)), "even"),
    ("unpack dtype", lambda: unpack_linear_weight(torch.ones(3, 4, dtype=torch.float64)), "packed"),
    ("x dtype differs", lambda: packed_linear(torch.ones(2, 4, dtype=torch.bfloat16), _packed()), "packed"),
    ("weight rank", lambda: pack_linear_weight(torch.ones(3)), "weight"),
    ("weight empty", lambda: pack_linear_weight(torch.ones(0, 4)), "weight"),
    ("x dtype", lambda: packed_linear(torch.ones(2, 4, dtype=torch.float64), _packed()), "x"),
    ("x in_features", lambda: packed_linear(torch.ones(2, 5), _packed()), "x"),
    (
        "x silu in_features",
        lambda: packed_linear(torch.ones(2, 4), _packed(), silu_and_mul=True),
        "2 \\* in_features",
    ),
    ("x strided", lambda: packed_linear(torch.ones(2, 8)[:, ::2], _packed()), "x"),
    ("x 0-d", lambda: packed_linear(torch.tensor(1.0), _packed()), "x"),
    ("packed rank", lambda: packed_linear(torch.ones(2, 4), torch.ones(1, 4, 32)), "packed"),
    ("packed strided", lambda: packed_linear(torch.ones(2, 4), torch.ones(4, 10).t()), "packed"),
    ("packed dtype", lambda: packed_linear(torch.ones(2, 4), _packed().double()), "packed"),
    ("bias shape", lambda: packed_linear(torch.ones(2, 4), _packed(), torch.ones(9)), "bias"),
    (
        "bias dtype",
        lambda: packed_linear(torch.ones(2, 4), _packed(), torch.ones(10, dtype=torch.float64)),
        "bias",
    ),
    (
        "bias bf16",
        lambda: packed_linear(torch.ones(2, 4), _packed(), torch.ones(10, dtype=torch.bfloat16)),
        "bias",
    ),
    ("bias strided", lambda: packed_linear(torch.ones(2, 4), _packed(), torch.ones(20)[::2]), "bias"),
]


@pytest.mark.parametrize("name,call,word", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise(name, call, word):
    with pytest.raises((ValueError, RuntimeError), match=word):
        call()


def test_fuzz_malformed_calls_never_crash(matmul_path):
    """Random (often invalid) shapes, dtypes and strides: only Python errors, never a crash, and
    every call that succeeds matches the reference."""
    rng = random.Random(2026)
    dtypes = [torch.float32] * 5 + [torch.bfloat16] * 2 + [torch.float64, torch.float16, torch.int32]
    ok = 0
    for _ in range(300):
        n, k = rng.choice([1, 3, 32, 33, 70]), rng.choice([1, 2, 5, 16, 31])
        weight = torch.randn(n, k).to(rng.choice(dtypes))
        try:
            packed = pack_linear_weight(weight)
        except (ValueError, RuntimeError):
            continue
        if rng.random() < 0.3:  # a transposed or reshaped packed tensor (slicing it is undetectable
            # misuse: its memory is in panel order, documented as an operand for packed_linear only)
            packed = rng.choice([packed.t(), packed.reshape(1, -1)])
        silu = rng.random() < 0.3
        xk = rng.choice([2 * k if silu else k] * 3 + [k + 1, 2 * k, 0])
        same = weight.dtype if rng.random() < 0.8 else rng.choice(dtypes)  # mostly consistent
        x = torch.randn(rng.choice([0, 1, 4, 13]), xk).to(same)
        if rng.random() < 0.2 and x.dim() == 2:
            x = x.t()
        bias = rng.choice(
            [None, None, torch.randn(n).to(same), torch.randn(n + 1).to(same), torch.randn(n).double()]
        )
        try:
            y = packed_linear(x, packed, bias, silu_and_mul=silu)
        except (ValueError, RuntimeError):
            continue
        ok += 1
        check_close(y, x, weight.float(), bias, silu)
    assert ok > 20
