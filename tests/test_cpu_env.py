"""The CPU-path environment variables, read once at import (fluid_rt/cpu_isa.py): a bad value is an
ImportError naming the variable, a good one takes effect. Each case imports fluid_rt in a fresh
interpreter (the choice is made at import)."""

import os
import platform
import subprocess
import sys
import tempfile

import pytest
import torch

import fluid_rt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fluid_rt.__file__)))
REPORT = "import fluid_rt; print(fluid_rt.build_info()['cpu_isa'], fluid_rt.build_info()['cpu_amx'])"


def run_import(code=REPORT, **env):
    """``code`` (by default: import fluid_rt and print its CPU path) in a fresh interpreter, with the
    fluid_rt these tests import (an in-place build or the installed package) first on the path, run
    outside the checkout (whose source tree would otherwise shadow an installed package)."""
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(
        [sys.executable, "-c", code],
        env=full,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FLUID_RT_CPU_ISA": "avx9"}, "FLUID_RT_CPU_ISA=avx9: unknown CPU path"),
        ({"FLUID_RT_CPU_AMX": "yes"}, "FLUID_RT_CPU_AMX=yes: expected 0"),
    ],
)
def test_bad_values_are_import_errors(env, message):
    result = run_import(**env)
    assert result.returncode != 0 and "ImportError" in result.stderr and message in result.stderr


def test_good_values_take_effect():
    portable = run_import(FLUID_RT_CPU_ISA="portable", FLUID_RT_CPU_AMX="0")
    assert portable.returncode == 0, portable.stderr
    assert portable.stdout.split() == ["portable", "False"]
    features = fluid_rt._C.cpu_features()
    amx = run_import(FLUID_RT_CPU_AMX="1")
    if features["amx_int8"] or features["amx_bf16"]:
        assert amx.returncode == 0 and amx.stdout.split()[1] == "True", amx.stderr
    else:
        assert amx.returncode != 0 and "no AMX tiles" in amx.stderr


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86 torch capabilities")
@pytest.mark.skipif("portable" not in fluid_rt._C.cpu_isas_supported(), reason="no portable path")
def test_portable_attention_fallback_follows_torchs_code():
    """The portable path hands large attention calls to torch's SDPA only where torch runs wider
    vectors than the kernel: not with torch held to its x86 baseline code (ATEN_CPU_CAPABILITY)."""
    code = "from fluid_rt.ops import attention as a; print(a.uses_torch_fallback(17, 2065, 32, 128))"
    native = run_import(code, FLUID_RT_CPU_ISA="portable")
    baseline = run_import(code, FLUID_RT_CPU_ISA="portable", ATEN_CPU_CAPABILITY="default")
    assert native.returncode == 0 and baseline.returncode == 0, native.stderr + baseline.stderr
    assert native.stdout.split() == [str(torch.backends.cpu.get_cpu_capability() != "DEFAULT")]
    assert baseline.stdout.split() == ["False"]
