"""The CPU-path environment variables, read once at import (fluid_rt/cpu_isa.py): a bad value is an
ImportError naming the variable, a good one takes effect. Each case imports fluid_rt in a fresh
interpreter (the choice is made at import)."""

import os
import subprocess
import sys
import tempfile

import pytest

import fluid_rt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fluid_rt.__file__)))
REPORT = "import fluid_rt; print(fluid_rt.build_info()['cpu_isa'], fluid_rt.build_info()['cpu_amx'])"


def run_import(**env):
    """``import fluid_rt`` in a fresh interpreter, with the fluid_rt these tests import (an in-place
    build or the installed package) first on the path, run outside the checkout (whose source tree
    would otherwise shadow an installed package)."""
    full = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    return subprocess.run(
        [sys.executable, "-c", REPORT],
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
