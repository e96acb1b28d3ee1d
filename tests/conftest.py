"""Test setup shared by the whole suite.

Imports fluid_rt from this checkout when it holds an in-place build (DEVELOPERS.md), and otherwise
from the installed package (pip install), never a checkout copy without its compiled extension.
Either way ``benchmarks`` (the baselines some tests check) is importable from the checkout.
"""

import contextlib
import glob
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN_DIR = os.path.join(ROOT, "tests", "data", "golden")

if glob.glob(os.path.join(ROOT, "fluid_rt", "_C*.so")):
    sys.path.insert(0, ROOT)
else:
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != ROOT]
    import fluid_rt  # noqa: E402,F401  (the installed package, before the checkout is on the path)

    sys.path.append(ROOT)  # for benchmarks/ (the baseline implementations the tests check)


@pytest.fixture(autouse=True)
def _poison_cuda_allocator(request):
    """CUDA tests start with every free block of torch's caching allocator filled with 0xFF bytes
    (NaN in float32/bfloat16/float16, -1 in integers), so an output element a kernel forgets to
    write reads as garbage instead of a stale, possibly correct, value of an earlier call."""
    if "cuda" in request.keywords and torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()  # the cached free blocks go; the ones below replace them
        # 1 MiB blocks fill 2 MiB small-pool segments; 20 MiB ones fill large-pool segments.
        blocks = [
            torch.empty(n, dtype=torch.uint8, device="cuda").fill_(0xFF)
            for n in [1 << 20] * 16 + [20 << 20] * 4
        ]
        del blocks
    yield


def _has_cuda_emu():
    import fluid_rt

    return bool(fluid_rt.build_info().get("cuda_emu"))


def pytest_collection_modifyitems(config, items):
    skip_emu = pytest.mark.skip(reason="needs a build with the CUDA emulation (FLUID_RT_CUDA_EMU=1)")
    emu_built = _has_cuda_emu()
    for item in items:
        if item.get_closest_marker("emu") is not None and not emu_built:
            item.add_marker(skip_emu)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# The emulated CUDA backend as a device parameter: tests take "cpu" tensors and, for this param, the
# fluid_rt.ops wrappers call the CUDA kernels under the emulator (see _cuda_emulation below).
EMU = pytest.param("cpu", id="emu", marks=pytest.mark.emu)


@pytest.fixture(autouse=True)
def _cuda_emulation(request):
    """Tests marked ``emu`` run with the fluid_rt.ops wrappers routed to ``torch.ops.fluid_rt_emu``
    (the CUDA kernels under the CPU emulator, 4 emulated SMs so small shapes take the split paths;
    every launch runs in forward, reverse and random thread order, which must agree)."""
    if request.node.get_closest_marker("emu") is not None and _has_cuda_emu():
        from fluid_rt.ops._backend import cuda_emulation

        with cuda_emulation():
            yield
    else:
        yield


def _supported_cpu_isas():
    import fluid_rt

    return list(fluid_rt._C.cpu_isas_supported())


def matmul_paths():
    """The CPU paths, and on a CPU with AMX tiles the avx512 path without them ("avx512-noamx"):
    the matmul kernels run other code there (AVX512-VNNI, vdpbf16ps)."""
    import fluid_rt

    features = fluid_rt._C.cpu_features()
    amx = features["amx_int8"] or features["amx_bf16"]
    return _supported_cpu_isas() + (["avx512-noamx"] if amx else [])


@contextlib.contextmanager
def on_cpu_path(name):
    import fluid_rt
    from fluid_rt.cpu_isa import use_amx

    isa, _, variant = name.partition("-")
    with fluid_rt.use_cpu_isa(isa), use_amx(False) if variant == "noamx" else contextlib.nullcontext():
        yield


@pytest.fixture(params=_supported_cpu_isas())
def cpu_isa(request):
    """Runs the test once per CPU path this machine supports (portable, avx2, avx512), with the
    kernels switched to that path for the test's duration; the value is the path's name."""
    if request.node.get_closest_marker("emu") is not None and request.param != _supported_cpu_isas()[-1]:
        pytest.skip("the emulated CUDA kernels do not depend on the CPU path: one run is enough")
    with on_cpu_path(request.param):
        yield request.param


@pytest.fixture(params=matmul_paths())
def matmul_path(request):
    """``cpu_isa`` for the matmul kernels: every CPU path, plus "avx512-noamx" on an AMX CPU."""
    with on_cpu_path(request.param):
        yield request.param
