"""What `pip install .` ships: every Python package of the source tree, and the shipped adapter."""

import os

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_every_package_of_the_tree_is_installed():
    """A subpackage missing from [tool.setuptools] packages imports from a checkout but not from an
    installed wheel (CI caught fluid_rt.decode that way once)."""
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    found = {
        os.path.relpath(d, ROOT).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(ROOT, "fluid_rt"))
        if "__init__.py" in files
    }
    assert found == listed, (
        f"not listed: {sorted(found - listed)}, listed but absent: {sorted(listed - found)}"
    )


def test_the_shipped_adapter_is_package_data():
    data = _pyproject()["tool"]["setuptools"]["package-data"]["fluid_rt"]
    folder = os.path.join(ROOT, "fluid_rt", "data", "smollm2-fluid")
    shipped = {f"data/smollm2-fluid/{name}" for name in os.listdir(folder)}
    assert shipped == set(data)
