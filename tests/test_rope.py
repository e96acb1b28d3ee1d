"""fluid_rt.ops.rope_ against HF Llama's rotary embedding (the same separately rounded ops)."""

import random

import pytest
import torch

from fluid_rt.config import ModelConfig
from fluid_rt.model import apply_rope, rope_tables
from fluid_rt.ops import rope_

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def hf_rope(x, cos, sin):
    """transformers' apply_rotary_pos_emb on one tensor: q * cos + rotate_half(q) * sin, with the
    usual (un-negated) sin, in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def tables(T, D, dtype):
    """cos, fluid_rt's half-negated sin and HF's plain sin for positions 3 .. 3 + T - 1."""
    cfg = ModelConfig(
        family="llama",
        vocab_size=8,
        hidden_size=4 * D,
        intermediate_size=8,
        num_layers=1,
        num_heads=4,
        num_kv_heads=4,
        head_dim=D,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )
    cos, sin = rope_tables(cfg, 3 + T, dtype, "cpu")
    half = D // 2
    hf_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
    return cos[3:], sin[3:], hf_sin[3:]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "B,T,H,D", [(1, 1, 1, 2), (2, 5, 3, 16), (1, 17, 12, 64), (3, 2, 4, 128), (2, 3, 2, 20), (20, 30, 2, 128)]
)
def test_matches_hf_exactly(dtype, B, T, H, D, cpu_isa):
    """The q/k heads of a fused projection (a strided view), rotated in place; the v part and the
    rest of the buffer untouched."""
    gen = torch.Generator().manual_seed(B * 100 + T * 10 + H + D)
    qkv = (torch.randn(B, T, (H + 2) * D, generator=gen) * 3).to(dtype)
    want_rest = qkv[..., H * D :].clone()
    x = qkv[..., : H * D].unflatten(-1, (H, D))
    cos, sin, hf_sin = tables(T, D, dtype)
    cos_b, sin_b = cos.expand(B, T, D).contiguous(), sin.expand(B, T, D).contiguous()
    want = hf_rope(x.clone(), cos[:, None, :], hf_sin[:, None, :])
    rope_(x, cos_b, sin_b)
    assert torch.equal(x, want)  # same ops, same roundings: bit for bit
    assert torch.equal(qkv[..., H * D :], want_rest)


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_path_matches_hf_exactly(dtype):
    """``model.apply_rope``, the torch-ops rotation the CUDA step runs inside its graph: the same
    separately rounded products and sum as HF (checked here on the CPU, where torch's elementwise
    ops round as CUDA's do)."""
    B, T, H, D = 2, 7, 5, 64
    gen = torch.Generator().manual_seed(7)
    x = (torch.randn(B, T, H, D, generator=gen) * 3).to(dtype)
    cos, sin, hf_sin = tables(T, D, dtype)
    got = apply_rope(x, cos[None, :, None, :], sin[None, :, None, :])
    assert torch.equal(got, hf_rope(x, cos[:, None, :], hf_sin[:, None, :]))


def test_rejects_overlapping_rows():
    """An expanded x (rows at stride 0) is refused: in place, its one memory row would be rotated
    once per view row."""
    x = torch.randn(1, 1, 4).expand(3, 1, 4)
    cos, sin = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(ValueError, match="x: its rows overlap"):
        rope_(x, cos, sin)


def test_opcheck_and_compile():
    x = torch.randn(2, 3, 4, 16)
    cos, sin = torch.randn(2, 3, 16), torch.randn(2, 3, 16)
    torch.library.opcheck(torch.ops.fluid_rt.rope_.default, (x.clone(), cos, sin))

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(x, cos, sin):
        rope_(x, cos, sin)
        return x * 2

    want = x.clone()
    rope_(want, cos, sin)
    got = x.clone()
    torch.testing.assert_close(f(got, cos, sin), want * 2)


BAD = [
    (
        "x dtype",
        lambda: rope_(torch.ones(2, 3, 4, dtype=torch.float64), torch.ones(2, 4), torch.ones(2, 4)),
        "x",
    ),
    ("x rank", lambda: rope_(torch.ones(4), torch.ones(4), torch.ones(4)), "x"),
    ("odd head_dim", lambda: rope_(torch.ones(2, 3, 5), torch.ones(2, 5), torch.ones(2, 5)), "even"),
    (
        "heads strided",
        lambda: rope_(torch.ones(2, 4, 3).transpose(1, 2), torch.ones(2, 4), torch.ones(2, 4)),
        "x",
    ),
    ("cos shape", lambda: rope_(torch.ones(2, 3, 4), torch.ones(3, 4), torch.ones(2, 4)), "cos"),
    (
        "sin dtype",
        lambda: rope_(torch.ones(2, 3, 4), torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bfloat16)),
        "sin",
    ),
    ("cos strided", lambda: rope_(torch.ones(2, 3, 4), torch.ones(4, 2).t(), torch.ones(2, 4)), "cos"),
    (
        "cos aliases x",
        lambda: (lambda t: rope_(t, t.view(2, 4), torch.ones(2, 4)))(torch.ones(2, 1, 4)),
        "share memory",
    ),
]


@pytest.mark.parametrize("name,call,word", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise_value_error(name, call, word):
    with pytest.raises(ValueError, match=word):
        call()


def test_fuzz_malformed_calls_never_crash(cpu_isa):
    """Random shapes, dtypes and strides: only Python errors, and every accepted call is HF's."""
    rng = random.Random(7)
    dtypes = [torch.float32] * 4 + [torch.bfloat16, torch.float64, torch.int32]
    ok = 0
    for _ in range(300):
        lead = [rng.choice([0, 1, 2, 3]) for _ in range(rng.randint(0, 2))]
        H, D = rng.choice([1, 2, 3]), rng.choice([2, 4, 5, 8])
        x = torch.randn(*lead, H, D).to(rng.choice(dtypes))
        if rng.random() < 0.2 and x.dim() >= 2:
            x = x.transpose(-1, -2)
        table = [*lead, D] if rng.random() < 0.8 else [*lead, D + 1]
        cos = torch.randn(table).to(x.dtype if rng.random() < 0.9 else torch.float64)
        sin = torch.randn(table).to(cos.dtype)
        before = x.clone()
        try:
            rope_(x, cos, sin)
        except (ValueError, RuntimeError, TypeError):
            assert torch.equal(x, before)  # a refused call leaves x alone
            continue
        ok += 1
        hf_sin = torch.cat((-sin[..., : D // 2], sin[..., D // 2 :]), -1)
        assert torch.equal(x, hf_rope(before, cos[..., None, :], hf_sin[..., None, :]))
    assert ok > 20
