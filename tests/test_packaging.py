"""The wheel: it builds, ships what it must (typing marker, licence, every subpackage), installs and runs.

The wheel is built from a copy of the sources (the working tree is left untouched) and installed
into a fresh virtual environment that reuses this interpreter's packages (torch is not installed
again), then ``liplayers demo --quick`` runs from it.
"""
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

import liplayers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} < 77 (needed for the licence expression)")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "liplayers"), src / "liplayers",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp / "dist"), str(src)])
    wheels = list((tmp / "dist").glob("liplayers-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "liplayers/py.typed" in names
    assert "liplayers/onnx.py" in names
    for package in ("nn", "functional", "parametrizations", "lipschitz", "losses", "regularizers", "analysis",
                    "certify", "zoo"):
        assert f"liplayers/{package}/__init__.py" in names, package
    assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/", "examples/"))]
    dist_info = f"liplayers-{liplayers.__version__}.dist-info"
    assert any(n.startswith(dist_info) and n.endswith("LICENSE") for n in names)
    meta = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
    assert f"Version: {liplayers.__version__}" in meta
    assert "License-Expression: MIT" in meta
    assert "Requires-Dist: torch>=2.2" in meta
    for extra in ("test", "examples", "docs", "onnx", "attacks"):
        assert f"Provides-Extra: {extra}" in meta
    entry = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
    assert "liplayers = liplayers.cli:main" in entry


def test_wheel_installs_and_runs(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    # pip of this interpreter installs into the venv; --no-index: the dependencies (torch, numpy, einops)
    # must be satisfied by the packages the venv reuses, nothing is downloaded
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--quiet", str(wheel)])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _run([str(python), "-c", "import liplayers, os; print(os.path.dirname(liplayers.__file__))"],
                 cwd=str(tmp_path), env=env).stdout.strip()
    assert os.path.realpath(where).startswith(os.path.realpath(str(venv))), where  # the wheel, not the checkout
    assert os.path.isfile(os.path.join(where, "py.typed"))
    out = tmp_path / "demo"
    _run([str(bindir / "liplayers"), "demo", "--quick", "--no-progress", "--no-plot", "--out", str(out)],
         cwd=str(tmp_path), env=env)
    assert (out / "results.json").is_file()
