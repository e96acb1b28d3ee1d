"""token_entropy against a float64 reference written out here (softmax in fp64).

The same checks run on CPU (every CPU path the machine has: avx512, avx2, portable; one and two
threads, split rows)
and, marked ``cuda``, on a GPU.
"""

import math
import random

import pytest
import torch
from conftest import EMU

import fluid_rt
from fluid_rt.ops import TokenStats, token_entropy

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda), EMU]  # EMU: the CUDA kernels, emulated
NAN = float("nan")
INF = float("inf")


# ------------------------------------------------------------------------------------------------
# Reference: plain float64 math on the (upcast) inputs.
def reference(logits: torch.Tensor, temperature: float = 1.0):
    y = logits.detach().to("cpu", torch.float64) / temperature
    V = y.shape[-1]
    ymax = y.max(dim=-1, keepdim=True).values
    z = torch.exp(y - ymax)
    s = z.sum(-1, keepdim=True)
    p = z / s
    logp = (y - ymax) - torch.log(s)
    entropy = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)
    max_prob = p.max(-1).values
    idx = torch.arange(V, dtype=torch.int64).expand_as(y)
    argmax = torch.where(y == ymax, idx, torch.full_like(idx, V)).min(-1).values  # first max
    lse = (ymax + torch.log(s)).squeeze(-1)
    return entropy, max_prob, argmax, lse


def check_close(out: TokenStats, logits: torch.Tensor, temperature: float = 1.0, ent_atol: float = 2e-6):
    ent, mp, am, lse = reference(logits, temperature)
    lead = logits.shape[:-1]
    assert isinstance(out, TokenStats)
    for name, t, dt in (
        ("entropy", out.entropy, torch.float32),
        ("max_prob", out.max_prob, torch.float32),
        ("argmax", out.argmax, torch.int64),
        ("logsumexp", out.logsumexp, torch.float32),
    ):
        assert t.shape == lead, (name, t.shape, lead)
        assert t.dtype == dt, (name, t.dtype)
        assert t.device == logits.device, name
    got = [t.cpu() for t in out]
    for name, t in zip(("entropy", "max_prob", "logsumexp"), (got[0], got[1], got[3])):
        assert torch.isfinite(t).all(), f"{name}: non-finite output for finite input"
    torch.testing.assert_close(got[0].double(), ent, rtol=1e-5, atol=ent_atol)
    torch.testing.assert_close(got[1].double(), mp, rtol=1e-5, atol=1e-7)
    assert torch.equal(got[2], am), (got[2], am)
    torch.testing.assert_close(got[3].double(), lse, rtol=1e-5, atol=2e-6)


BEST_ISA = list(fluid_rt._C.cpu_isas_supported())[-1]


@pytest.fixture
def cpu_path(cpu_isa):
    """Every CPU path this machine has (conftest's cpu_isa); a CUDA variant runs once."""
    return cpu_isa


def cpu_only_variant(device, cpu_path):
    if device == "cuda" and cpu_path != BEST_ISA:
        pytest.skip("CPU-path variant")


@pytest.fixture
def threads2():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def gen(seed: int):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------
# Finite inputs.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("V", [1, 7, 4099, 50257, 153376])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_random_rows(device, V, dtype, cpu_path, threads2):
    cpu_only_variant(device, cpu_path)
    rows = 3 if V < 100000 else 2
    x = (torch.randn(rows, V, generator=gen(V)) * 3).to(dtype).to(device)
    check_close(token_entropy(x), x)
    check_close(token_entropy(x, 0.7), x, 0.7)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(5,), (2, 3, 5), (1, 1, 4099), (4, 0, 9), (0, 3), (3, 1, 2, 17)])
def test_leading_shapes(device, shape, threads2):
    x = (torch.randn(*shape, generator=gen(sum(shape))) * 2).to(device)
    out = token_entropy(x, 1.3)
    assert out.entropy.shape == x.shape[:-1]
    if x.numel():
        check_close(out, x, 1.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("threads", [1, 2])
def test_single_long_row_split(device, threads, cpu_path):
    """One row of 153376 is cut across threads (CPU) or CTAs (CUDA) and merged."""
    cpu_only_variant(device, cpu_path)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = (torch.randn(153376, generator=gen(11)) * 4).to(device)
        x[100000] = 25.0  # the max deep inside a later piece
        check_close(token_entropy(x, 0.9), x, 0.9)
        # max growing along the row: every piece raises the max repeatedly
        ramp = torch.linspace(-20, 20, 153376).to(device)
        check_close(token_entropy(ramp), ramp)
        ramp_down = ramp.flip(0).contiguous()
        check_close(token_entropy(ramp_down, 2.0), ramp_down, 2.0)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 3.0, 1e3])
def test_temperatures(device, temperature, cpu_path):
    cpu_only_variant(device, cpu_path)
    x = (torch.randn(4, 4099, generator=gen(5)) * 2).to(device)
    check_close(token_entropy(x, temperature), x, temperature)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_magnitude(device, dtype, cpu_path):
    cpu_only_variant(device, cpu_path)
    g = gen(3)
    x = (1e4 + torch.randn(3, 50257, generator=g) * 5).to(dtype)
    x[1] = (-1e4 + torch.randn(50257, generator=g) * 50).to(dtype)
    x[2] = (torch.randn(50257, generator=g) * 1e4).to(dtype)
    x = x.to(device)
    check_close(token_entropy(x), x)
    check_close(token_entropy(x, 5.0), x, 5.0)


@pytest.mark.parametrize("device", DEVICES)
def test_peaky_rows(device, cpu_path):
    cpu_only_variant(device, cpu_path)
    g = gen(9)
    x = torch.randn(5, 50257, generator=g)
    x[0, 123] = 40.0  # entropy ~ 1e-12: atol decides
    x[1, 50000] = 15.0
    x[2, 7] = 8.0
    x[3] = -100.0
    x[3, 0] = 100.0  # exactly one-hot in fp32
    x[4, 40000] = 20.0
    x[4, 10] = 20.0  # two equal peaks: argmax must be the first
    x = x.to(device)
    out = token_entropy(x)
    check_close(out, x)
    assert out.entropy.min().item() >= 0.0
    assert out.argmax[4].item() == 10


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_ties_first_index(device, dtype, cpu_path, threads2):
    cpu_only_variant(device, cpu_path)
    rng = random.Random(4)
    V = 70001
    x = torch.randn(6, V, generator=gen(4)).clamp(-3, 3)
    expect = []
    for r in range(6):
        pos = sorted(rng.sample(range(V), 2 + r))  # across lanes, vectors, pieces
        x[r, pos] = 7.5
        expect.append(pos[0])
    x = x.to(dtype).to(device)
    out = token_entropy(x)
    assert out.argmax.cpu().tolist() == expect
    check_close(out, x)
    # a single row (split path) with ties in different pieces
    row = x[5].contiguous()
    assert token_entropy(row).argmax.item() == expect[5]
    # all equal: first index, uniform distribution
    flat = torch.full((2, 4099), 0.25, dtype=dtype, device=device)
    out = token_entropy(flat)
    assert out.argmax.tolist() == [0, 0]
    torch.testing.assert_close(out.entropy.cpu(), torch.full((2,), math.log(4099)), rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_rows(device):
    g = gen(21)
    base = (torch.randn(3, 5, 4099, generator=g) * 2).to(device)
    s = base[:, 3, :]  # row stride 5 * 4099
    check_close(token_entropy(s, 0.8), s, 0.8)
    s2 = base[1:, 1:4, :]  # [2, 3, V] with strides (5V, V, 1): not collapsible
    with pytest.raises(ValueError, match="logits"):
        token_entropy(s2)
    s3 = base[:, :, 1:]  # misaligned rows (offset 1) but collapsible? no: dims 0 and 1 collapse
    check_close(token_entropy(s3), s3)
    s4 = base[:2, :, :].reshape(10, 4099)[::3]  # row stride 3V
    check_close(token_entropy(s4), s4)
    e = base[0, 0].expand(4, 4099)  # stride 0 rows
    out = token_entropy(e)
    check_close(out, e)
    with pytest.raises(ValueError, match="logits"):
        token_entropy(base[..., ::2])
    with pytest.raises(ValueError, match="logits"):
        token_entropy(base.transpose(0, 1))
    big = torch.randn(2, 3, 8, generator=g).to(device)
    with pytest.raises(ValueError, match="logits"):
        token_entropy(big.transpose(1, 2))


# ------------------------------------------------------------------------------------------------
# Non-finite rows: the documented rules.
def _nonfinite_case(dtype, device, V):
    x = torch.randn(8, V, generator=gen(V)).to(dtype)
    x[0, V // 2] = NAN
    x[0, V - 1] = NAN
    x[1, V // 3] = INF
    x[1, V - 2] = INF
    x[2, :] = -INF
    x[3, : V // 2] = -INF  # masked vocabulary: -inf entries weigh 0
    x[4, V - 1] = INF
    x[4, 3] = NAN  # NaN wins over +inf
    x[5, 5] = -INF
    x[5, V - 3] = INF  # a single +inf: one-hot
    x[6, :] = INF  # all +inf: uniform
    # row 7 stays finite
    return x.to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("V", [7, 4099, 70001])
def test_nonfinite_rules(device, dtype, V, cpu_path, threads2):
    cpu_only_variant(device, cpu_path)
    x = _nonfinite_case(dtype, device, V)
    out = token_entropy(x, 0.6)
    ent, mp, am, lse = (t.cpu() for t in out)
    # row 0: NaN -> NaN stats, argmax at the first NaN
    assert math.isnan(ent[0]) and math.isnan(mp[0]) and math.isnan(lse[0]) and am[0] == V // 2
    # row 1: two +inf -> uniform over them
    assert ent[1].item() == pytest.approx(math.log(2), abs=1e-6)
    assert mp[1].item() == 0.5 and lse[1].item() == INF and am[1] == V // 3
    # row 2: all -inf
    assert math.isnan(ent[2]) and math.isnan(mp[2]) and lse[2].item() == -INF and am[2] == 0
    # row 3: half -inf -> statistics of the finite half
    ref = reference(x[3, V // 2 :], 0.6) if V > 1 else None
    torch.testing.assert_close(ent[3].double(), ref[0], rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(mp[3].double(), ref[1], rtol=1e-5, atol=1e-7)
    assert am[3] == ref[2] + V // 2
    torch.testing.assert_close(lse[3].double(), ref[3], rtol=1e-5, atol=2e-6)
    # row 4: NaN and +inf -> the NaN rule
    assert math.isnan(ent[4]) and am[4] == 3
    # row 5: one +inf
    assert ent[5].item() == 0.0 and mp[5].item() == 1.0 and lse[5].item() == INF and am[5] == V - 3
    # row 6: all +inf
    assert ent[6].item() == pytest.approx(math.log(V), rel=1e-6) and am[6] == 0
    assert mp[6].item() == pytest.approx(1.0 / V, rel=1e-6)
    # row 7: finite, untouched by its neighbours
    check_close(TokenStats(*(t[7] for t in out)), x[7], 0.6)


@pytest.mark.parametrize("device", DEVICES)
def test_nonfinite_single_long_row(device, cpu_path):
    """Non-finite entries in one piece of a split row still decide the whole row."""
    cpu_only_variant(device, cpu_path)
    V = 153376
    x = torch.randn(V, generator=gen(2)).to(device)
    y = x.clone()
    y[140000] = NAN
    y[150000] = NAN
    o = token_entropy(y)
    assert math.isnan(o.entropy.item()) and o.argmax.item() == 140000
    y = x.clone()
    y[120000] = INF
    o = token_entropy(y)
    assert o.entropy.item() == 0.0 and o.max_prob.item() == 1.0 and o.argmax.item() == 120000
    assert o.logsumexp.item() == INF
    y = x.clone()
    y[:100000] = -INF
    o = token_entropy(y)
    ref = reference(y[100000:])
    torch.testing.assert_close(o.entropy.cpu().double(), ref[0], rtol=1e-5, atol=2e-6)
    assert o.argmax.item() == ref[2].item() + 100000
    y = torch.full((V,), -INF, device=device)
    o = token_entropy(y)
    assert o.logsumexp.item() == -INF and math.isnan(o.entropy.item()) and o.argmax.item() == 0


# ------------------------------------------------------------------------------------------------
# Op registration, compile, arguments.
def test_opcheck():
    x = torch.randn(3, 4, 257, generator=gen(1))
    torch.library.opcheck(torch.ops.fluid_rt.token_entropy.default, (x, 0.8))
    torch.library.opcheck(torch.ops.fluid_rt.token_entropy.default, (x[:, 1, :].to(torch.bfloat16),))
    torch.library.opcheck(torch.ops.fluid_rt.token_entropy.default, (torch.randn(9),))


@pytest.mark.cuda
def test_opcheck_cuda():
    x = torch.randn(3, 4, 257, device="cuda")
    torch.library.opcheck(torch.ops.fluid_rt.token_entropy.default, (x, 0.8))


def test_torch_compile_smoke():
    def f(x):
        s = token_entropy(x, 0.9)
        return s.entropy * 2 + s.max_prob, s.argmax, s.logsumexp

    x = torch.randn(4, 1003, generator=gen(7))
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    want = f(x)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_outputs_are_fresh():
    x = torch.randn(2, 100, generator=gen(8))
    a = token_entropy(x)
    b = token_entropy(x)
    assert a.entropy.data_ptr() != b.entropy.data_ptr()
    assert torch.equal(a.entropy, b.entropy) and torch.equal(a.argmax, b.argmax)


@pytest.mark.parametrize("bad", [0.0, -1.0, NAN, INF, -INF, 1e-40])
def test_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        token_entropy(torch.randn(2, 5), bad)


def test_bad_logits():
    with pytest.raises(ValueError, match="logits"):
        token_entropy(torch.randn(2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="logits"):
        token_entropy(torch.randint(0, 5, (2, 5)))
    with pytest.raises(ValueError, match="logits"):
        token_entropy(torch.tensor(1.0))
    with pytest.raises(ValueError, match="logits"):
        token_entropy(torch.randn(3, 0))
    with pytest.raises(ValueError, match="logits"):
        torch.ops.fluid_rt.token_entropy(torch.randn(3, 4)[:, ::2])
    with pytest.raises((TypeError, RuntimeError)):
        token_entropy("not a tensor")
    with pytest.raises((TypeError, RuntimeError, ValueError)):
        token_entropy(torch.randn(3, 4), "hot")
    # shapes through the fake impl on the meta device
    meta = token_entropy(torch.empty(2, 3, 11, device="meta", dtype=torch.bfloat16))
    assert meta.entropy.shape == (2, 3) and meta.argmax.dtype == torch.int64


def test_fuzz_malformed_calls():
    """Random (often invalid) calls: never a crash, only ValueError/RuntimeError/TypeError, and a
    call that succeeds matches the reference."""
    rng = random.Random(1234)
    dtypes = [
        torch.float32,
        torch.bfloat16,
        torch.float16,
        torch.float64,
        torch.int32,
        torch.int64,
        torch.bool,
        torch.uint8,
        torch.complex64,
    ]
    temps = [1.0, 0.5, 2.0, 0.0, -0.3, NAN, INF, 1e-45, 1e300, "x", None, 3]
    ok = 0
    for _ in range(300):
        ndim = rng.randint(0, 4)
        shape = [rng.choice([0, 1, 2, 3, 5, 17]) for _ in range(ndim)]
        dtype = rng.choice(dtypes)
        if dtype.is_floating_point or dtype.is_complex:
            x = torch.randn(*shape, dtype=dtype) if ndim else torch.randn((), dtype=dtype)
        else:
            x = torch.randint(0, 2, shape, dtype=dtype) if ndim else torch.tensor(1, dtype=dtype)
        kind = rng.randint(0, 4)
        if kind == 1 and x.dim() >= 2:
            x = x.transpose(-1, -2)
        elif kind == 2 and x.dim() >= 1:
            x = x[..., ::2]
        elif kind == 3 and x.dim() == 3:
            x = x.permute(1, 0, 2)
        elif kind == 4 and x.numel() > 0 and x.dim() >= 1:  # overlapping / stride-0 rows
            rows, V, st = max(1, x.shape[0] // 2), x.shape[-1], rng.randint(0, 3)
            flat = torch.randn((rows - 1) * st + V).to(dtype)
            x = flat.as_strided((rows, V), (st, 1))
        t = rng.choice(temps)
        try:
            out = token_entropy(x, t)
        except (ValueError, RuntimeError, TypeError):
            continue
        ok += 1
        if x.numel():
            xf = x.float()
            if torch.isfinite(xf).all():
                check_close(out, x, float(t), ent_atol=2e-6)
    assert ok > 10  # the fuzzer also exercised valid calls
