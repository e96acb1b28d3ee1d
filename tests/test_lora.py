"""fluid_rt.ops.gated_lora_ (the gated adapter's LoRA delta at mask rows) against float64 math."""

import pytest
import torch
import torch.nn.functional as F

from fluid_rt.ops import gated_lora_, lora_pack_b

TOL = {torch.float32: 2e-5, torch.bfloat16: 1e-2}


def block_diagonal(b_t, out_parts, rank):
    """The fused layer's [rank, out] block-diagonal B^T from b_t [rank / parts, out] (its diagonal
    blocks side by side, before ``lora_pack_b``)."""
    if not out_parts:
        return b_t
    r = rank // len(out_parts)
    dense = torch.zeros(rank, b_t.shape[1], dtype=b_t.dtype)
    c0 = 0
    for q, n in enumerate(out_parts):
        dense[q * r : (q + 1) * r, c0 : c0 + n] = b_t[:, c0 : c0 + n]
        c0 += n
    return dense


def reference(y, x, rows, a_t, b_t, silu_and_mul, out_parts=()):
    """float64: y's listed rows plus the delta, rounded to y's dtype once; the others unchanged."""
    b_t = block_diagonal(b_t, out_parts, a_t.shape[1])
    xd = x.double()
    if silu_and_mul:
        gate, up = xd.chunk(2, dim=-1)
        xd = F.silu(gate) * up
    want = y.double().clone()
    flat_y, flat_x = want.view(-1, y.shape[-1]), xd.reshape(-1, xd.shape[-1])
    flat_y[rows] += (flat_x[rows] @ a_t.double()) @ b_t.double()
    return want


def make(shape_lead, in_f, rank, out_f, dtype, silu_and_mul, seed, parts=1, factors=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape_lead, in_f * (2 if silu_and_mul else 1), generator=g).to(dtype)
    y = torch.randn(*shape_lead, out_f, generator=g).to(dtype)
    a_t = torch.randn(in_f, rank, generator=g) / in_f**0.5
    b_t = torch.randn(rank // parts, out_f, generator=g) / rank**0.5
    return y, x, a_t.to(factors), b_t.to(factors)


def run(y, x, rows, a_t, b_t, silu_and_mul, parts=()):
    """The op with b_t ``[rank / parts, out]`` packed as it takes it."""
    gated_lora_(y, x, rows, a_t, lora_pack_b(b_t, parts), silu_and_mul, parts)


@pytest.mark.parametrize("factors", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("silu_and_mul", [False, True])
@pytest.mark.parametrize(
    "lead, in_f, rank, out_f, rows, parts",
    [
        ((1,), 1, 1, 1, [0], ()),
        ((9,), 576, 48, 960, [1, 4, 5, 8], ()),  # q/k/v of SmolLM2 with B dense
        ((9,), 576, 48, 960, [1, 4, 5, 8, 0, 2], (576, 192, 192)),  # ... block diagonal, 6 rows
        ((7,), 45, 8, 2 * 37, [6, 1, 2, 3, 4], (37, 37)),  # a gate/up pair of odd sizes
        ((2, 5), 37, 5, 71, [9, 0, 3], ()),  # odd sizes, rows out of order
        ((3,), 64, 16, 33, [], ()),  # no mask row: nothing changes
        ((40,), 1536, 16, 576, list(range(0, 40, 3)), ()),  # a down projection, enough rows for threads
    ],
)
def test_matches_reference(factors, dtype, silu_and_mul, lead, in_f, rank, out_f, rows, parts, cpu_isa):
    seed = len(rows) + in_f
    y, x, a_t, b_t = make(lead, in_f, rank, out_f, dtype, silu_and_mul, seed, max(len(parts), 1), factors)
    idx = torch.tensor(rows, dtype=torch.int64)
    x_before = x.clone()
    want = reference(y, x, idx, a_t, b_t, silu_and_mul, parts)
    y_before = y.clone()
    run(y, x, idx, a_t, b_t, silu_and_mul, parts)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), want, rtol=tol, atol=tol)
    untouched = torch.ones(y.numel() // out_f, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(y.view(-1, out_f)[untouched], y_before.view(-1, out_f)[untouched])  # bitwise
    assert torch.equal(x, x_before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_rows_delta_does_not_depend_on_the_other_rows(dtype, cpu_isa):
    """Rows run in tiles of several at once; each row's result is bitwise the one it gets alone."""
    y, x, a_t, b_t = make((11,), 96, 12, 3 * 40, dtype, False, seed=5, parts=3, factors=torch.bfloat16)
    parts = (40, 40, 40)
    together = y.clone()
    run(together, x, torch.arange(11), a_t, b_t, False, parts)
    for r in range(11):
        alone = y.clone()
        run(alone, x, torch.tensor([r]), a_t, b_t, False, parts)
        assert torch.equal(alone[r], together[r]), r
    some = y.clone()
    run(some, x, torch.tensor([10, 3, 7]), a_t, b_t, False, parts)
    assert torch.equal(some[[10, 3, 7]], together[[10, 3, 7]])


def test_threads_split_the_columns_without_changing_a_bit(cpu_isa):
    """A few rows with enough work: the threads share the output columns in 64-column pieces of
    each part (odd part sizes here). The result is bitwise the single-thread one and each row's
    alone (one row is below the threading threshold), and matches float64."""
    y, x, a_t, b_t = make((5,), 300, 24, 130 + 70 + 200, torch.float32, True, seed=9, parts=3)
    parts, idx = (130, 70, 200), torch.tensor([4, 0, 2, 3])
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            out = y.clone()
            run(out, x, idx, a_t, b_t, True, parts)
            results.append(out)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])
    torch.testing.assert_close(
        results[1].double(), reference(y, x, idx, a_t, b_t, True, parts), rtol=2e-5, atol=2e-5
    )
    for r in idx.tolist():
        alone = y.clone()
        run(alone, x, torch.tensor([r]), a_t, b_t, True, parts)
        assert torch.equal(alone[r], results[1][r]), r


def test_strided_rows_and_huge_gate(cpu_isa):
    """y and x as column slices of wider matrices (a fused projection's output); gate values whose
    exp would overflow (silu(-200) = -0, silu(200) = 200)."""
    g = torch.Generator().manual_seed(7)
    y_wide, x_wide = torch.randn(6, 20, generator=g), torch.randn(6, 30, generator=g)
    y, x = y_wide[:, 3:13], x_wide[:, 5:25]
    x[:, :3] = torch.tensor([-200.0, 200.0, 0.0])
    a_t, b_t = torch.randn(10, 4, generator=g), torch.randn(4, 10, generator=g)
    idx = torch.tensor([5, 2])
    want = reference(y, x, idx, a_t, b_t, True)
    rest = y_wide.clone()
    run(y, x, idx, a_t, b_t, True)
    # Terms reach ~200 * |a| * |b|: float32 sums of them are good to ~1e-4 absolute.
    torch.testing.assert_close(y.double(), want, rtol=2e-5, atol=1e-3)
    assert torch.equal(y_wide[:, :3], rest[:, :3]) and torch.equal(y_wide[:, 13:], rest[:, 13:])


def test_opcheck():
    y, x, a_t, b_t = make((4,), 8, 2, 6, torch.float32, False, 0)
    torch.library.opcheck(
        torch.ops.fluid_rt.gated_lora_.default, (y, x, torch.tensor([1, 3]), a_t, lora_pack_b(b_t), False, [])
    )
    y, x, a_t, b_t = make((4,), 8, 2, 6, torch.float32, False, 0, parts=2, factors=torch.bfloat16)
    b_t = lora_pack_b(b_t, [3, 3])
    torch.library.opcheck(
        torch.ops.fluid_rt.gated_lora_.default, (y, x, torch.tensor([1, 3]), a_t, b_t, False, [3, 3])
    )


def _args(**over):
    y, x, a_t, b_t = make((4,), 8, 2, 6, torch.float32, False, 0)
    args = dict(y=y, x=x, rows=torch.tensor([0, 2]), a_t=a_t, b_t=lora_pack_b(b_t), silu_and_mul=False)
    args.update(over)
    return args


BAD = [
    ("x dtype", dict(x=torch.randn(4, 8, dtype=torch.float64)), "x"),
    ("x not y's dtype", dict(x=torch.randn(4, 8).bfloat16()), "x"),
    ("x rows", dict(x=torch.randn(5, 8)), "x"),
    ("x features", dict(x=torch.randn(4, 9)), "x"),
    ("silu needs 2 * in", dict(silu_and_mul=True), r"2 \* in_features"),
    ("rows dtype", dict(rows=torch.tensor([0, 2], dtype=torch.int32)), "rows"),
    ("row out of range", dict(rows=torch.tensor([0, 4])), "outside"),
    ("negative row", dict(rows=torch.tensor([-1])), "outside"),
    ("row twice", dict(rows=torch.tensor([2, 2])), "twice"),
    ("a_t dtype", dict(a_t=torch.randn(8, 2).double()), "a_t"),
    ("factor dtypes differ", dict(a_t=torch.randn(8, 2).bfloat16()), "one dtype"),
    ("b_t not packed", dict(b_t=torch.randn(2, 6)), "b_t"),
    ("y without columns", dict(y=torch.randn(4, 0), b_t=torch.randn(0, 2, 64)), "y"),
    ("b_t rank", dict(b_t=torch.randn(1, 3, 64)), "b_t"),
    ("b_t pieces", dict(b_t=torch.randn(2, 2, 64)), "b_t"),
    ("b_t piece width", dict(b_t=torch.randn(1, 2, 32)), "b_t"),
    ("a_t strided", dict(a_t=torch.randn(2, 8).t()), "a_t"),
    ("parts sum", dict(out_parts=[3, 2], b_t=torch.randn(2, 1, 64)), "sum to 5"),
    ("parts and b_t rows", dict(out_parts=[2, 2, 2]), "part"),
    ("parts positive", dict(out_parts=[6, 0], b_t=torch.randn(1, 1, 64)), "positive"),
]


@pytest.mark.parametrize("name, over, match", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise(name, over, match):
    with pytest.raises(ValueError, match=match):
        gated_lora_(**_args(**over))


def test_shared_memory_rejected():
    y = torch.randn(4, 8)
    with pytest.raises(ValueError):
        gated_lora_(y, y, torch.tensor([0]), torch.randn(8, 2), torch.randn(1, 2, 64))


def test_pack_b_layout():
    """Piece p of a part holds its columns 64 p .. 64 p + 63, rows together, zero-padded."""
    b_t = torch.arange(2 * 200, dtype=torch.float32).view(2, 200)
    packed = lora_pack_b(b_t, (130, 70))
    assert packed.shape == (3 + 2, 2, 64) and packed.is_contiguous()
    assert torch.equal(packed[1], b_t[:, 64:128]) and torch.equal(packed[2, :, :2], b_t[:, 128:130])
    assert torch.equal(packed[4, :, :6], b_t[:, 194:200]) and not packed[4, :, 6:].any()
    with pytest.raises(ValueError, match="out_parts"):
        lora_pack_b(b_t, (130, 69))
