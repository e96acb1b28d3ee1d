"""fluid_rt.ops.rms_norm (+ fused residual add) against float64 math and HF Llama's RMSNorm."""

import pytest
import torch
from conftest import EMU

import fluid_rt
from fluid_rt.ops import rms_norm

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
ISAS = list(fluid_rt._C.cpu_isas_supported())
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def reference(x, weight, eps, add=None):
    """(x after the add, out): the sum in x's dtype as torch rounds it, the norm in float64, the
    normed value rounded to x's dtype before the weight (HF's order)."""
    if add is not None:
        x = x + add
    xd = x.double()
    normed = (xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return x, (weight.double() * normed.double())


@pytest.mark.parametrize("device", DEVICES + [EMU])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (2, 5, 64), (17, 576), (4, 4096), (0, 32)])
@pytest.mark.parametrize("with_add", [False, True])
def test_matches_reference(device, dtype, shape, with_add, cpu_isa):
    if device == "cuda" and cpu_isa != ISAS[-1]:
        pytest.skip("CPU-path variant")
    gen = torch.Generator().manual_seed(hash((shape, with_add)) % 1000)
    x = (torch.randn(*shape, generator=gen) * 3).to(dtype).to(device)
    weight = torch.randn(shape[-1], generator=gen).to(dtype).to(device)
    add = None
    if with_add:  # a strided view, as a slice of a wider projection output
        wide = torch.randn(*shape[:-1], shape[-1] + 5, generator=gen).to(dtype).to(device)
        add = wide[..., 2 : 2 + shape[-1]]
    x_in = x.clone()
    want_x, want = reference(x_in, weight, 1e-5, add)
    out = rms_norm(x, weight, 1e-5, add)
    assert out.shape == x.shape and out.dtype == dtype and out.device.type == device
    torch.testing.assert_close(x, want_x, rtol=0, atol=0)  # the residual sum, exactly torch's
    tol = TOL[dtype]
    torch.testing.assert_close(out.double(), want, rtol=tol, atol=tol)
    if add is None:
        assert torch.equal(x, x_in)


def test_float32_equals_hf_llama_rmsnorm():
    transformers = pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(576, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576))
    x = torch.randn(9, 576)
    torch.testing.assert_close(
        rms_norm(x.clone(), norm.weight.detach(), 1e-5), norm(x).detach(), rtol=2e-6, atol=2e-6
    )
    assert transformers  # the import is the reference's


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_paths_agree(dtype):
    """Every CPU path against the widest one: odd H (vector tails), the residual sum exact."""
    gen = torch.Generator().manual_seed(5)
    x, w, add = (
        torch.randn(5, 203, generator=gen).to(dtype),
        torch.randn(203, generator=gen).to(dtype),
        torch.randn(5, 203, generator=gen).to(dtype),
    )
    results = {}
    for isa in ISAS:
        with fluid_rt.use_cpu_isa(isa):
            xi = x.clone()
            results[isa] = (xi, rms_norm(xi, w, 1e-6, add))
    best_x, best = results[ISAS[-1]]
    for isa, (xi, out) in results.items():
        # float32: the square sums differ in order only; 16-bit types may then round an output to
        # the neighbouring value
        tol = 1e-6 if dtype == torch.float32 else 2**-7
        torch.testing.assert_close(out, best, rtol=tol, atol=tol, msg=isa)
        assert torch.equal(xi, best_x), isa  # the residual sum is exact on every path


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_and_compile(device):
    x, w, add = (
        torch.randn(3, 64, device=device),
        torch.randn(64, device=device),
        torch.randn(3, 64, device=device),
    )
    torch.library.opcheck(torch.ops.fluid_rt.rms_norm.default, (x.clone(), w, 1e-5, add))
    torch.library.opcheck(torch.ops.fluid_rt.rms_norm.default, (x.clone(), w, 1e-5, None))

    @torch.compile(backend="aot_eager", fullgraph=True)
    def f(x, w, add):
        return rms_norm(x, w, 1e-5, add) * 2

    got_x = x.clone()
    got = f(got_x, w, add)
    want_x, want = reference(x, w, 1e-5, add)
    torch.testing.assert_close(got.double(), 2 * want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_x, want_x)


BAD = [
    ("x dtype", lambda: rms_norm(torch.ones(2, 4, dtype=torch.int32), torch.ones(4), 1e-5), "x"),
    ("x 0-d", lambda: rms_norm(torch.tensor(1.0), torch.ones(1), 1e-5), "x"),
    ("x strided", lambda: rms_norm(torch.ones(4, 8)[:, ::2], torch.ones(4), 1e-5), "x"),
    ("weight shape", lambda: rms_norm(torch.ones(2, 4), torch.ones(5), 1e-5), "weight"),
    ("weight dtype", lambda: rms_norm(torch.ones(2, 4), torch.ones(4, dtype=torch.float64), 1e-5), "weight"),
    ("eps", lambda: rms_norm(torch.ones(2, 4), torch.ones(4), float("nan")), "eps"),
    ("add shape", lambda: rms_norm(torch.ones(2, 4), torch.ones(4), 1e-5, torch.ones(3, 4)), "add"),
    (
        "add dtype",
        lambda: rms_norm(torch.ones(2, 4), torch.ones(4), 1e-5, torch.ones(2, 4, dtype=torch.bfloat16)),
        "add",
    ),
    (
        "add aliases x",
        lambda: (lambda t: rms_norm(t, torch.ones(4), 1e-5, t))(torch.ones(2, 4)),
        "share memory",
    ),
]


@pytest.mark.parametrize("name,call,word", BAD, ids=[b[0] for b in BAD])
def test_bad_arguments_raise_value_error(name, call, word):
    with pytest.raises(ValueError, match=word):
        call()
