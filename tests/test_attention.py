"""Tests of fluid_rt causal_attention against a float64 reference written plainly here.

Reference: per query row b, keys K = cache[r, :L] with L = cache_seqlens[b] + T (after the new
k/v are written), scores = q K^T * scale, mask = tril(ones(T, L), diagonal=L - T) (bottom-right
aligned: query t sees keys 0 .. seqlens[b] + t), softmax in float64.
"""

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import EMU

import fluid_rt
import fluid_rt.ops.attention as attention_op
from fluid_rt.ops import causal_attention

HAS_CUDA_KERNELS = bool(fluid_rt.build_info()["with_cuda"]) and torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _our_kernel():
    """Every test checks our kernel, on every CPU path; the wrapper's torch fallback (which some paths
    take, see fluid_rt/ops/attention.py) has its own test below."""
    with attention_op.force_kernel():
        yield


# ---- reference ----------------------------------------------------------------------------------


def reference(q, k_cache, v_cache, seqlens, cache_idx, scale):
    """float64 out [B, T, Hq, D] and lse [B, T, Hq] over the (already updated) caches."""
    B, T, Hq, D = q.shape
    G = Hq // k_cache.shape[2]
    out = torch.empty(B, T, Hq, D, dtype=torch.float64)
    lse = torch.empty(B, T, Hq, dtype=torch.float64)
    for b in range(B):
        r = int(cache_idx[b]) if cache_idx is not None else b
        L = int(seqlens[b]) + T
        keys = k_cache[r, :L].cpu().double().repeat_interleave(G, dim=1)  # [L, Hq, D]
        vals = v_cache[r, :L].cpu().double().repeat_interleave(G, dim=1)
        scores = torch.einsum("thd,lhd->htl", q[b].cpu().double(), keys) * scale
        mask = torch.ones(T, L, dtype=torch.bool).tril(diagonal=L - T)
        scores = scores.masked_fill(~mask, float("-inf"))
        lse[b] = torch.logsumexp(scores, dim=-1).transpose(0, 1)
        out[b] = torch.einsum("htl,lhd->thd", torch.softmax(scores, dim=-1), vals)
    return out, lse


def sdpa_same_dtype(q, k_cache, v_cache, seqlens, cache_idx, scale):
    """torch's own SDPA in q's dtype (the yardstick for bf16/fp16 error), per batch row."""
    B, T, Hq, D = q.shape
    G = Hq // k_cache.shape[2]
    out = torch.empty(B, T, Hq, D, dtype=torch.float64)
    for b in range(B):
        r = int(cache_idx[b]) if cache_idx is not None else b
        L = int(seqlens[b]) + T
        keys = k_cache[r, :L].repeat_interleave(G, dim=1).transpose(0, 1)[None]
        vals = v_cache[r, :L].repeat_interleave(G, dim=1).transpose(0, 1)[None]
        mask = torch.ones(T, L, dtype=torch.bool, device=q.device).tril(diagonal=L - T)
        o = F.scaled_dot_product_attention(
            q[b].transpose(0, 1)[None], keys, vals, attn_mask=mask, scale=scale
        )
        out[b] = o[0].transpose(0, 1).cpu().double()
    return out


# ---- inputs -------------------------------------------------------------------------------------


def make_inputs(B, T, Hq, Hkv, D, S_max, dtype, device, with_kv, with_idx, fused, seed, seqlens=None):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(device)

    if fused:  # q, k, v as slices of one fused projection: non-contiguous, last dim contiguous
        qkv = randn(B, T, Hq + 2 * Hkv, D)
        q, k, v = qkv[:, :, :Hq], qkv[:, :, Hq : Hq + Hkv], qkv[:, :, Hq + Hkv :]
    else:
        q, k, v = randn(B, T, Hq, D), randn(B, T, Hkv, D), randn(B, T, Hkv, D)
    Bc = B + 2 if with_idx else B
    k_cache, v_cache = randn(Bc, S_max, Hkv, D), randn(Bc, S_max, Hkv, D)
    if seqlens is None:
        seqlens = torch.randint(0, S_max - T + 1, (B,), generator=g, dtype=torch.int32)
        seqlens[0] = 0
        if B > 1:
            seqlens[-1] = S_max - T
    seqlens = torch.as_tensor(seqlens, dtype=torch.int32)
    cache_idx = torch.randperm(Bc, generator=g)[:B].to(torch.int32) if with_idx else None
    # Poison every cache slot the op must never read: past seqlens + T of the used rows, and rows
    # no query uses. Slots seqlens .. +T-1 are poisoned too when the op writes them.
    used = cache_idx.tolist() if with_idx else list(range(B))
    for r in range(Bc):
        if r not in used:
            k_cache[r] = float("nan")
            v_cache[r] = float("nan")
    for b, r in enumerate(used):
        start = int(seqlens[b]) + (0 if with_kv else T)
        k_cache[r, start:] = float("nan")
        v_cache[r, start:] = float("nan")
    return dict(
        q=q,
        k_cache=k_cache,
        v_cache=v_cache,
        seqlens=seqlens.to(device),
        k=k if with_kv else None,
        v=v if with_kv else None,
        cache_idx=cache_idx.to(device) if with_idx else None,
    )


def expected_caches(inp):
    kc, vc = inp["k_cache"].clone(), inp["v_cache"].clone()
    if inp["k"] is not None:
        T = inp["q"].shape[1]
        for b in range(inp["q"].shape[0]):
            r = int(inp["cache_idx"][b]) if inp["cache_idx"] is not None else b
            s = int(inp["seqlens"][b])
            kc[r, s : s + T] = inp["k"][b]
            vc[r, s : s + T] = inp["v"][b]
    return kc, vc


def check_case(
    B, T, Hq, Hkv, D, S_max, dtype, device, with_kv, with_idx, fused, seed, seqlens=None, scale=None
):
    inp = make_inputs(B, T, Hq, Hkv, D, S_max, dtype, device, with_kv, with_idx, fused, seed, seqlens)
    kc_want, vc_want = expected_caches(inp)
    seqlens_before = inp["seqlens"].clone()
    out, lse = causal_attention(
        inp["q"],
        inp["k_cache"],
        inp["v_cache"],
        inp["seqlens"],
        inp["k"],
        inp["v"],
        cache_batch_idx=inp["cache_idx"],
        softmax_scale=scale,
        return_lse=True,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    # The whole caches: written exactly at seqlens .. +T-1 of the mapped rows, nothing else changed.
    torch.testing.assert_close(inp["k_cache"], kc_want, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(inp["v_cache"], vc_want, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(inp["seqlens"], seqlens_before)
    assert out.shape == (B, T, Hq, D) and out.dtype == dtype and out.device.type == device
    assert lse.shape == (B, T, Hq) and lse.dtype == torch.float32

    sc = scale if scale is not None else D**-0.5
    ref_out, ref_lse = reference(inp["q"], kc_want, vc_want, inp["seqlens"], inp["cache_idx"], sc)
    got = out.cpu().double()
    assert torch.isfinite(got).all()
    if dtype == torch.float32:
        torch.testing.assert_close(got, ref_out, rtol=1e-5, atol=1e-5 * ref_out.abs().max().item())
        torch.testing.assert_close(lse.cpu().double(), ref_lse, rtol=1e-5, atol=1e-5)
    else:
        # flash-attention's rule: at most a small multiple of the error torch's SDPA makes in this dtype.
        sdpa = sdpa_same_dtype(inp["q"], kc_want, vc_want, inp["seqlens"], inp["cache_idx"], sc)
        sdpa_err = (sdpa - ref_out).abs().max().item()
        our_err = (got - ref_out).abs().max().item()
        assert our_err <= 3 * sdpa_err + 1e-5, (our_err, sdpa_err)
        # lse is computed in fp32 from the exact low-precision inputs the reference also uses.
        torch.testing.assert_close(lse.cpu().double(), ref_lse, rtol=1e-5, atol=1e-4)


# (B, T, Hq, Hkv, D, S_max, with_kv, with_idx, fused)
CASES = [
    (3, 1, 8, 8, 64, 100, True, False, False),
    (2, 2, 8, 2, 80, 257, False, True, True),
    (3, 5, 16, 2, 96, 513, True, True, True),
    (2, 17, 32, 8, 128, 1000, True, False, True),
    (1, 33, 8, 1, 256, 300, True, True, False),
    (2, 17, 8, 1, 128, 4096, True, False, False),
    (2, 33, 4, 4, 64, 2100, False, False, True),
    (3, 5, 12, 3, 80, 64, True, True, False),
    (2, 2, 8, 1, 96, 130, True, False, True),
    (1, 1, 32, 8, 256, 777, False, True, False),
    (2, 9, 6, 1, 16, 70, True, True, True),  # the tiny golden models' head dims
    (3, 4, 4, 2, 32, 129, True, False, False),
    (1, 1, 9, 3, 64, 300, True, False, True),  # SmolLM2's group of 3: a 4-row item
    (2, 2, 4, 2, 80, 90, True, True, False),  # 4 rows from 2 queries x 2 heads
]
LOW_PRECISION_CASES = [CASES[1], CASES[3], CASES[4], CASES[8], CASES[11]]


@pytest.mark.parametrize(
    "case",
    CASES,
    ids=lambda c: "B{}T{}H{}/{}D{}S{}{}{}{}".format(
        *c[:6], "_kv" if c[6] else "", "_idx" if c[7] else "", "_fused" if c[8] else ""
    ),
)
def test_matches_reference_fp32_cpu(case, cpu_isa):
    check_case(*case[:6], torch.float32, "cpu", *case[6:], seed=hash(case) % 1000)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", LOW_PRECISION_CASES)
def test_matches_reference_low_precision_cpu(case, dtype, cpu_isa):
    check_case(*case[:6], dtype, "cpu", *case[6:], seed=7)


def test_prefill_cpu(cpu_isa):
    check_case(1, 300, 8, 2, 128, 300, torch.float32, "cpu", True, False, True, seed=3, seqlens=[0])
    check_case(2, 300, 4, 4, 64, 333, torch.bfloat16, "cpu", True, True, False, seed=4, seqlens=[0, 33])


def test_softmax_scale_cpu(cpu_isa):
    check_case(2, 5, 8, 2, 64, 90, torch.float32, "cpu", True, False, False, seed=5, scale=0.37)


def check_rows_bitwise_independent_of_width_and_batch(
    dtype, device, S_max=1200, seqlens=(0, 127, 255, 1000), rows=(0, 1, 2, 3)
):
    """A row's output is bitwise the same whatever else the call holds: a shorter block of the same
    queries (the decoder reuses outputs of forwards of other widths), or other sequences in the
    batch (more items: no split-KV; one short row: split-KV on CUDA). Seqlens put rows on both
    sides of key chunk boundaries."""
    g = torch.Generator().manual_seed(11)
    Hq, Hkv, D = 8, 2, 64
    q = torch.randn(4, 17, Hq, D, generator=g).to(dtype).to(device)
    kc, vc = (torch.randn(4, S_max, Hkv, D, generator=g).to(dtype).to(device) for _ in range(2))
    sl = torch.tensor(seqlens, dtype=torch.int32, device=device)
    full, full_lse = causal_attention(q, kc, vc, sl, return_lse=True)  # 4 x 17 rows: many items
    for b in rows:
        for width in (1, 5, 17):
            one, one_lse = causal_attention(
                q[b : b + 1, :width].contiguous(),
                kc[b : b + 1],
                vc[b : b + 1],
                sl[b : b + 1],
                return_lse=True,
            )
            assert torch.equal(one[0], full[b, :width]), (b, width)
            assert torch.equal(one_lse[0], full_lse[b, :width]), (b, width)


@pytest.mark.skipif("portable" not in fluid_rt._C.cpu_isas_supported(), reason="no portable path")
def test_torch_fallback_cpu(monkeypatch):
    """On the portable path the wrapper runs torch's SDPA for large calls (here: every call): same
    contract (cache writes, lse, cache_batch_idx, scale), same reference and tolerances, same errors."""
    monkeypatch.setattr(attention_op, "_force_kernel", False)
    monkeypatch.setattr(attention_op, "_torch_outpaces_portable", lambda: True)
    with fluid_rt.use_cpu_isa("portable"):
        assert attention_op.uses_torch_fallback(17, 2065, 32, 128)
        assert not attention_op.uses_torch_fallback(9, 265, 9, 64)
        monkeypatch.setattr(attention_op, "_FALLBACK_MIN_WORK", 0)
        for i, case in enumerate([CASES[0], CASES[3], CASES[4], CASES[7], CASES[10]]):
            check_case(*case[:6], torch.float32, "cpu", *case[6:], seed=70 + i)
        check_case(*CASES[1][:6], torch.bfloat16, "cpu", *CASES[1][6:], seed=75)
        check_case(1, 40, 4, 2, 64, 40, torch.float16, "cpu", True, False, False, seed=76, seqlens=[0])
        check_case(2, 5, 8, 2, 64, 90, torch.float32, "cpu", True, True, False, seed=77, scale=0.37)
        for name, mutate in BAD:
            a = good_args()
            mutate(a)
            if a["q"].dim() != 4:
                continue
            with pytest.raises(ValueError, match=name):
                causal_attention(
                    a["q"],
                    a["k_cache"],
                    a["v_cache"],
                    a["cache_seqlens"],
                    a["k"],
                    a["v"],
                    cache_batch_idx=a["cache_batch_idx"],
                )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_bitwise_independent_of_width_and_batch_cpu(dtype, cpu_isa):
    """Holds within each CPU path (the paths block differently inside a tile, so they may differ by
    rounding)."""
    check_rows_bitwise_independent_of_width_and_batch(dtype, "cpu")


def test_empty_batch_and_no_kv_cpu():
    q = torch.randn(0, 3, 4, 64)
    kc, vc = torch.randn(1, 8, 2, 64), torch.randn(1, 8, 2, 64)
    out, lse = causal_attention(q, kc, vc, torch.zeros(0, dtype=torch.int32), return_lse=True)
    assert out.shape == (0, 3, 4, 64) and lse.shape == (0, 3, 4)


# ---- argument checks ----------------------------------------------------------------------------


def good_args(B=2, T=3, Hq=4, Hkv=2, D=64, S=16, dtype=torch.float32):
    return dict(
        q=torch.randn(B, T, Hq, D, dtype=dtype),
        k_cache=torch.randn(B, S, Hkv, D, dtype=dtype),
        v_cache=torch.randn(B, S, Hkv, D, dtype=dtype),
        cache_seqlens=torch.tensor([0, 5], dtype=torch.int32),
        k=torch.randn(B, T, Hkv, D, dtype=dtype),
        v=torch.randn(B, T, Hkv, D, dtype=dtype),
        cache_batch_idx=None,
    )


def call(a, softmax_scale=None):
    return torch.ops.fluid_rt.causal_attention(
        a["q"],
        a["k_cache"],
        a["v_cache"],
        a["cache_seqlens"],
        a["k"],
        a["v"],
        a["cache_batch_idx"],
        softmax_scale,
    )


def _shared_caches(a):
    buf = torch.randn(2, *a["k_cache"].shape)
    a["k_cache"], a["v_cache"] = buf[0], buf[0]


def _q_in_cache(a):
    # q read through a (head-broadcast) view of k_cache's own memory.
    a["q"] = torch.as_strided(a["k_cache"], (2, 3, 4, 64), (16 * 2 * 64, 2 * 64, 0, 1))


def _k_in_vcache(a):
    a["k"] = a["v_cache"][:, :3]


BAD = [
    ("q", lambda a: a.update(q=a["q"].double())),
    ("q", lambda a: a.update(q=a["q"][0])),
    ("q", lambda a: a.update(q=torch.randn(2, 3, 4, 48))),
    ("q", lambda a: a.update(q=torch.randn(2, 3, 64, 4).transpose(2, 3))),
    ("q", lambda a: a.update(q=torch.randn(2, 3, 3, 64))),
    ("k_cache", lambda a: a.update(k_cache=a["k_cache"].half())),
    ("k_cache", lambda a: a.update(k_cache=a["k_cache"][0])),
    ("k_cache", lambda a: a.update(k_cache=a["k_cache"][:, :, :, :32])),
    ("k_cache", lambda a: a.update(k_cache=torch.randn(2, 2, 16, 64).transpose(1, 2))),
    ("k_cache", lambda a: a.update(k_cache=torch.randn(1, 16, 2, 64), v_cache=torch.randn(1, 16, 2, 64))),
    ("v_cache", lambda a: a.update(v_cache=a["v_cache"][:, :8])),
    ("v_cache", lambda a: a.update(v_cache=torch.randn(2, 2, 16, 64).transpose(1, 2))),
    ("v_cache", lambda a: a.update(v_cache=a["v_cache"].bfloat16())),
    ("v_cache", _shared_caches),
    ("cache_seqlens", lambda a: a.update(cache_seqlens=a["cache_seqlens"].long())),
    ("cache_seqlens", lambda a: a.update(cache_seqlens=torch.zeros(3, dtype=torch.int32))),
    ("cache_seqlens", lambda a: a.update(cache_seqlens=torch.zeros(2, 1, dtype=torch.int32))),
    ("cache_seqlens", lambda a: a.update(cache_seqlens=torch.tensor([0, 14], dtype=torch.int32))),
    ("cache_seqlens", lambda a: a.update(cache_seqlens=torch.tensor([-1, 0], dtype=torch.int32))),
    ("v", lambda a: a.update(v=None)),
    ("k", lambda a: a.update(k=None)),
    ("k", lambda a: a.update(k=a["k"].half())),
    ("k", lambda a: a.update(k=a["k"][:, :2])),
    ("k", lambda a: a.update(k=torch.randn(2, 3, 64, 2).transpose(2, 3))),
    ("v", lambda a: a.update(v=torch.randn(2, 3, 4, 64))),
    ("v", lambda a: a.update(v=a["v"][None])),
    ("k", _k_in_vcache),
    ("q", _q_in_cache),
    ("cache_batch_idx", lambda a: a.update(cache_batch_idx=torch.tensor([0, 1]))),
    ("cache_batch_idx", lambda a: a.update(cache_batch_idx=torch.tensor([0], dtype=torch.int32))),
    ("cache_batch_idx", lambda a: a.update(cache_batch_idx=torch.tensor([0, 2], dtype=torch.int32))),
    ("cache_batch_idx", lambda a: a.update(cache_batch_idx=torch.tensor([-1, 0], dtype=torch.int32))),
    ("cache_batch_idx", lambda a: a.update(cache_batch_idx=torch.tensor([1, 1], dtype=torch.int32))),
    ("q", lambda a: a.update(q=torch.randn(2, 17, 4, 64), k=None, v=None)),
]


@pytest.mark.parametrize("name,mutate", BAD, ids=[f"{i}-{n}" for i, (n, _) in enumerate(BAD)])
def test_argument_errors(name, mutate):
    a = good_args()
    call(a)  # the unmodified arguments are fine
    a = good_args()
    mutate(a)
    with pytest.raises(ValueError, match=name):
        call(a)


def test_repeated_cache_rows_are_fine_without_new_kv():
    """Two query rows may read one cache row; only writing it twice (k/v given) is refused."""
    a = good_args()
    a.update(
        k=None,
        v=None,
        cache_batch_idx=torch.tensor([1, 1], dtype=torch.int32),
        cache_seqlens=torch.tensor([4, 4], dtype=torch.int32),
    )
    out, _ = call(a)
    for b in range(2):  # each row alone, reading cache row 1
        one = dict(
            a,
            q=a["q"][b : b + 1],
            cache_seqlens=a["cache_seqlens"][:1],
            cache_batch_idx=torch.tensor([1], dtype=torch.int32),
        )
        torch.testing.assert_close(out[b : b + 1], call(one)[0], rtol=1e-6, atol=1e-6)


def test_softmax_scale_must_be_finite():
    with pytest.raises(ValueError, match="softmax_scale"):
        call(good_args(), softmax_scale=float("nan"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_device_mismatch():
    a = good_args()
    a["k"] = a["k"].cuda()
    with pytest.raises((RuntimeError, ValueError), match="k"):
        call(a)


def test_meta_tensors_use_the_fake_impl():
    # The fake impl gives shapes on the meta device without running a kernel.
    a = {k: (v.to("meta") if isinstance(v, torch.Tensor) else v) for k, v in good_args().items()}
    out, lse = call(a)
    assert out.shape == (2, 3, 4, 64) and lse.shape == (2, 3, 4) and lse.dtype == torch.float32


def test_random_malformed_calls_never_crash():
    rng = random.Random(1234)
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32, torch.int64]

    def rand_tensor(kind):
        rank = rng.choice([0, 1, 2, 3, 4, 4, 4, 5])
        shape = [rng.choice([0, 1, 2, 3, 4, 16, 64]) for _ in range(rank)]
        dt = rng.choice(dtypes) if rng.random() < 0.3 else (torch.int32 if kind == "idx" else torch.float32)
        t = torch.zeros(shape, dtype=dt) if dt in (torch.int32, torch.int64) else torch.randn(shape).to(dt)
        if rank >= 2 and rng.random() < 0.3:
            t = t.transpose(-1, -2)
        if dt in (torch.int32, torch.int64) and t.numel():
            t.random_(-3, 20)
        return t

    other_devices = ["meta"] + (["cuda"] if torch.cuda.is_available() else [])
    raised = 0
    for _ in range(200):
        a = good_args(
            B=rng.choice([1, 2]),
            T=rng.choice([1, 3]),
            Hq=rng.choice([2, 4]),
            Hkv=rng.choice([1, 2]),
            D=rng.choice([64, 80]),
            S=rng.choice([4, 16]),
        )
        a["cache_seqlens"] = torch.randint(-2, 20, (a["q"].shape[0],), dtype=torch.int32)
        for _ in range(rng.randint(1, 3)):
            key = rng.choice(list(a))
            choice = rng.random()
            if choice < 0.15:
                a[key] = None
            elif choice < 0.25 and isinstance(a[key], torch.Tensor) and a[key].dim() >= 2:
                a[key] = a[key].transpose(0, 1)
            elif choice < 0.35 and isinstance(a[key], torch.Tensor):
                a[key] = a[key][..., ::2]
            elif choice < 0.45 and isinstance(a[key], torch.Tensor):
                a[key] = a[key].to(rng.choice(other_devices))
            else:
                a[key] = rand_tensor("idx" if key in ("cache_seqlens", "cache_batch_idx") else "float")
        try:
            call(a)
        except (ValueError, RuntimeError, TypeError):
            raised += 1
    assert raised > 100  # most of these calls are malformed


# ---- torch.library / torch.compile --------------------------------------------------------------


def opcheck_args(device):
    inp = make_inputs(2, 3, 8, 2, 64, 40, torch.float32, device, True, True, True, seed=11)
    for key in ("k_cache", "v_cache"):
        inp[key] = torch.nan_to_num(inp[key])
    return (
        inp["q"],
        inp["k_cache"],
        inp["v_cache"],
        inp["seqlens"],
        inp["k"],
        inp["v"],
        inp["cache_idx"],
        None,
    )


def test_opcheck_cpu():
    torch.library.opcheck(torch.ops.fluid_rt.causal_attention.default, opcheck_args("cpu"))


@pytest.mark.cuda
def test_opcheck_cuda():
    torch.library.opcheck(torch.ops.fluid_rt.causal_attention.default, opcheck_args("cuda"))


def compile_smoke(device):
    inp = make_inputs(2, 5, 8, 2, 64, 48, torch.float32, device, True, False, False, seed=12)
    kc0, vc0 = inp["k_cache"].clone(), inp["v_cache"].clone()

    def f(q, kc, vc, sl, k, v):
        return causal_attention(q, kc, vc, sl, k, v) * 2.0

    want = f(inp["q"], inp["k_cache"], inp["v_cache"], inp["seqlens"], inp["k"], inp["v"])
    kc_want, vc_want = inp["k_cache"].clone(), inp["v_cache"].clone()
    inp["k_cache"].copy_(kc0)
    inp["v_cache"].copy_(vc0)
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(
        inp["q"], inp["k_cache"], inp["v_cache"], inp["seqlens"], inp["k"], inp["v"]
    )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(inp["k_cache"], kc_want, equal_nan=True)
    torch.testing.assert_close(inp["v_cache"], vc_want, equal_nan=True)


def test_torch_compile_cpu():
    compile_smoke("cpu")


@pytest.mark.cuda
def test_torch_compile_cuda():
    compile_smoke("cuda")


# ---- CUDA ---------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_reference_cuda(case, dtype):
    check_case(*case[:6], dtype, "cuda", *case[6:], seed=21)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_kv_cuda(dtype):
    # One row and one kv head over a long cache: few blocks, so the key range is split.
    check_case(1, 1, 8, 1, 128, 4096, dtype, "cuda", True, False, False, seed=31, seqlens=[4000])
    check_case(1, 17, 32, 8, 128, 4096, dtype, "cuda", True, False, False, seed=32, seqlens=[2048])
    check_case(2, 5, 4, 1, 80, 3000, dtype, "cuda", False, True, True, seed=33)
    check_case(1, 2, 8, 2, 256, 2000, dtype, "cuda", True, True, False, seed=34, seqlens=[3])


@pytest.mark.cuda
def test_prefill_cuda():
    check_case(1, 300, 8, 2, 128, 300, torch.float32, "cuda", True, False, True, seed=41, seqlens=[0])
    check_case(2, 300, 4, 4, 64, 333, torch.bfloat16, "cuda", True, True, False, seed=42, seqlens=[0, 33])


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=pytest.mark.cuda), EMU])
@pytest.mark.parametrize("long_cache", [False, True])
def test_out_of_range_rows_are_nan_cuda(long_cache, device):
    S = 4096 if long_cache and device == "cuda" else 600 if long_cache else 64  # long: the split-KV path
    inp = make_inputs(3, 4, 4, 2, 64, S, torch.float32, device, True, True, False, seed=51, seqlens=[0, 5, 1])
    inp["seqlens"][0] = S - 3  # row 0: S - 3 + 4 tokens do not fit
    inp["cache_idx"][2] = 99  # row 2: no such cache row
    kc0, vc0 = inp["k_cache"].clone(), inp["v_cache"].clone()
    out, lse = causal_attention(
        inp["q"],
        inp["k_cache"],
        inp["v_cache"],
        inp["seqlens"],
        inp["k"],
        inp["v"],
        cache_batch_idx=inp["cache_idx"],
        return_lse=True,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    assert torch.isnan(out[0]).all() and torch.isnan(lse[0]).all()
    assert torch.isnan(out[2]).all() and torch.isnan(lse[2]).all()
    assert torch.isfinite(out[1]).all() and torch.isfinite(lse[1]).all()
    r1 = int(inp["cache_idx"][1])
    kc0[r1, 5:9] = inp["k"][1]
    vc0[r1, 5:9] = inp["v"][1]
    torch.testing.assert_close(inp["k_cache"], kc0, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(inp["v_cache"], vc0, rtol=0, atol=0, equal_nan=True)


@pytest.mark.cuda
def test_cuda_graph_capture_replay():
    B, T, Hq, Hkv, D, S = 2, 5, 8, 2, 128, 2048
    inp = make_inputs(
        B, T, Hq, Hkv, D, S, torch.bfloat16, "cuda", True, False, False, seed=61, seqlens=[0, 100]
    )
    for key in ("k_cache", "v_cache"):
        inp[key] = torch.nan_to_num(inp[key])
    q, k, v, sl = inp["q"].clone(), inp["k"].clone(), inp["v"].clone(), inp["seqlens"].clone()
    kc, vc = inp["k_cache"], inp["v_cache"]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        causal_attention(q, kc, vc, sl, k, v)  # warm-up outside the graph
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = causal_attention(q, kc, vc, sl, k, v)
    # Replay on new inputs at new positions.
    g = torch.Generator().manual_seed(62)
    q.copy_(torch.randn(q.shape, generator=g).to(q))
    k.copy_(torch.randn(k.shape, generator=g).to(k))
    v.copy_(torch.randn(v.shape, generator=g).to(v))
    sl.copy_(torch.tensor([7, 300], dtype=torch.int32))
    kc_before, vc_before = kc.clone(), vc.clone()
    graph.replay()
    torch.cuda.synchronize()
    want_inp = dict(q=q, k_cache=kc_before, v_cache=vc_before, seqlens=sl, k=k, v=v, cache_idx=None)
    kc_want, vc_want = expected_caches(want_inp)
    assert torch.equal(kc, kc_want) and torch.equal(vc, vc_want)
    ref_out, _ = reference(q, kc_want, vc_want, sl, None, D**-0.5)
    sdpa = sdpa_same_dtype(q, kc_want, vc_want, sl, None, D**-0.5)
    assert (out.cpu().double() - ref_out).abs().max().item() <= 3 * (sdpa - ref_out).abs().max().item() + 1e-5


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_bitwise_independent_of_width_and_batch_cuda(dtype):
    # 4 x 17 rows fill the GPU (one pass per block); one row of width 1 takes the split-KV path.
    check_rows_bitwise_independent_of_width_and_batch(dtype, "cuda", S_max=4096, seqlens=(0, 255, 1000, 4000))


def check_masked_overflowed_values_stay_out(device):
    """fp16 V that overflowed to inf at a key only later queries see: earlier queries never touch
    it (a masked key's weight is 0, and 0 * inf is NaN), so their outputs match the reference."""
    inp = make_inputs(
        2, 4, 4, 2, 64, 300, torch.float16, device, True, False, False, seed=71, seqlens=[0, 270]
    )
    inp["v"][:, 3, 1, 5] = float("inf")  # the last query's own key, kv head 1
    kc_want, vc_want = expected_caches(inp)
    out = causal_attention(inp["q"], inp["k_cache"], inp["v_cache"], inp["seqlens"], inp["k"], inp["v"])
    # The queries before the last never see that key: their reference may take any finite value there
    # (the float64 einsum would also make 0 * inf).
    ref_out, _ = reference(
        inp["q"], kc_want, torch.nan_to_num(vc_want, posinf=0.0), inp["seqlens"], None, 64**-0.5
    )
    got = out.cpu().double()
    assert torch.isfinite(got[:, :3]).all() and torch.isfinite(got[:, 3, :2]).all()
    # (torch's SDPA makes the very NaN this guards against, so the bound is fp16's own rounding)
    torch.testing.assert_close(got[:, :3], ref_out[:, :3], rtol=2e-3, atol=2e-3)


@pytest.mark.cuda
def test_masked_overflowed_values_stay_out_cuda():
    check_masked_overflowed_values_stay_out("cuda")


# ---- the CUDA kernels under the CPU emulator (torch.ops.fluid_rt_emu, tests/conftest.py) ---------
# Smaller caches than the CUDA tests (the emulator runs every launch in three thread orders); with 4
# emulated SMs the cases below cover both the one-pass and the split-KV + combine paths, every head
# dim, GQA groups, several row tiles and several key chunks.
EMU_CASES = [
    (3, 1, 8, 8, 64, 100, True, False, False),  # 24 blocks: one pass
    (2, 2, 8, 2, 80, 257, False, True, True),  # 4 blocks: split-KV, 2 chunks
    (3, 5, 16, 2, 96, 300, True, True, True),  # split-KV
    (2, 17, 8, 2, 128, 300, True, False, True),  # 2 row tiles, 8 blocks: one pass, 2 chunks
    (1, 33, 8, 1, 256, 300, True, True, False),  # 9 row tiles of 32 rows, > 48 KiB shared memory
    (1, 17, 8, 1, 128, 700, True, False, False),  # 3 row tiles, split-KV over 3 chunks
    (3, 5, 12, 3, 80, 64, True, True, False),
    (2, 9, 6, 1, 16, 70, True, True, True),
    (3, 4, 4, 2, 32, 129, True, False, False),
    (1, 1, 9, 3, 64, 300, True, False, True),
    (2, 2, 4, 2, 80, 90, True, True, False),
]


@pytest.mark.emu
@pytest.mark.parametrize("case", EMU_CASES)
def test_matches_reference_emu(case):
    check_case(*case[:6], torch.float32, "cpu", *case[6:], seed=21)


@pytest.mark.emu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", [EMU_CASES[1], EMU_CASES[3], EMU_CASES[4], EMU_CASES[7]])
def test_matches_reference_low_precision_emu(case, dtype):
    check_case(*case[:6], dtype, "cpu", *case[6:], seed=22)


@pytest.mark.emu
def test_split_kv_emu():
    # One row and one kv head over a long cache (few blocks: split-KV), as test_split_kv_cuda.
    check_case(1, 1, 8, 1, 128, 1100, torch.float32, "cpu", True, False, False, seed=31, seqlens=[1000])
    check_case(1, 2, 8, 2, 256, 600, torch.bfloat16, "cpu", True, True, False, seed=34, seqlens=[3])
    check_case(1, 40, 4, 2, 64, 560, torch.float32, "cpu", True, False, True, seed=35, seqlens=[500])


@pytest.mark.emu
def test_prefill_emu():
    check_case(1, 70, 8, 2, 64, 80, torch.float32, "cpu", True, False, True, seed=41, seqlens=[0])


@pytest.mark.emu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_bitwise_independent_of_width_and_batch_emu(dtype):
    # 4 x 17 rows: 16 blocks, one pass each; one row: 1-2 blocks, split-KV over its chunks.
    check_rows_bitwise_independent_of_width_and_batch(
        dtype, "cpu", S_max=560, seqlens=(0, 255, 300, 530), rows=(1, 3)
    )


@pytest.mark.emu
def test_masked_overflowed_values_stay_out_emu():
    check_masked_overflowed_values_stay_out("cpu")
