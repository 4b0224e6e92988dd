"""Smoke tests of the MNIST experiments (``examples/mnist_*.py --quick``), run in-process.

Every script runs on synthetic 28×28 data (``--synthetic``), so these tests need no data file;
one test runs on the real MNIST files and is skipped when they are absent (set
``LIPLAYERS_DATA`` to the folder holding them). They check that results.json and the figures
are written and that the numbers are consistent (accuracies in [0, 1], robust ≤ clean, the
abstention metrics add up, no certificate broken by the attack).
"""
import importlib.util
import json
import os
import sys

import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location(f"_mnist_example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _run(name, tmp_path, *extra):
    out = tmp_path / name
    res = _load(name).main(["--quick", "--out", str(out), "--no-progress", *extra])
    with open(out / "results.json") as fh:
        disk = json.load(fh)
    for fig in res["figures"]:
        path = out / fig
        assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    return res, disk


def _mnist_dir():
    from liplayers.data import IDX_FILES, resolve_data_dir

    root = resolve_data_dir()
    if root is None:
        return None
    for d in (root / "mnist", root / "MNIST", root):
        if all((d / f).is_file() for f in IDX_FILES.values()):
            return str(root)
    return None


def test_fire_trades_synthetic(tmp_path):
    res, disk = _run("mnist_fire_trades", tmp_path, "--synthetic", "--eps-warmup", "0.5")
    assert disk["config"]["eps_warmup"] == 0.5
    assert {r["method"] for r in disk["summary"]} == {"CE", "Madry AT", "TRADES", "FIRE", "Hellinger"}
    for method, runs in res["runs"].items():
        for r in runs:
            assert 0.0 <= r["PGD-40"] <= 1.0 and 0.0 <= r["clean"] <= 1.0
            if "AutoAttack" in r:  # AutoAttack is only run where PGD failed: never above PGD
                assert r["AutoAttack"] <= r["PGD-40 on AA subset"] + 1e-12
    t = res["timing"]
    assert t["ratio_fire_over_trades"] > 0 and len(t["step_s"]["FIRE"]) == len(t["step_s"]["TRADES"]) >= 1


def test_iso_synthetic(tmp_path):
    res, disk = _run("mnist_iso", tmp_path, "--synthetic")
    assert res["sweep"][0] == 1e-3  # the paper's constant δ_m/ε = 10⁻³ is always trained
    names = {r["method"] for r in disk["summary"]}
    assert {"vanilla", "ISO (paper)", "ISO-rand", "ISO-Euclid", "ISO-layer", "Parseval", "JAC", "FIRE", "GNP"} <= names
    for runs in res["runs"].values():
        for r in runs:
            assert r["PGD 0.3"] <= r["PGD 0.2"] + 0.2 and r["PGD 0.1"] <= r["clean"] + 1e-12
            assert 0.0 <= r["noise 0.3"] <= 1.0


def test_curvature_synthetic(tmp_path):
    res, disk = _run("mnist_curvature", tmp_path, "--synthetic")
    assert len(disk["detector"]) == 4  # 2 models × (L∞, L2)
    both = [r for r in res["detector"] if r["n perturbed"] and r["n clean"]]
    assert both  # the AUC identity below is checked on at least one detector (not skipped for every row)
    for r in res["detector"]:
        assert 0.0 <= r["success"] <= 1.0
    for r in both:
        assert r["AUC Σκ̄"] + r["AUC Goldman"] == pytest.approx(1.0)
    for r in res["robustness"]:
        assert r["median worst-case r (L2)"] > 0 and r["median random r (L2)"] > 0


def test_abstain_synthetic(tmp_path):
    res, disk = _run("mnist_abstain", tmp_path, "--synthetic")
    for cv in res["curves"].values():
        total = cv["accuracy"] + cv["abstention"] + cv["certified error"]
        assert (abs(total - 1.0) < 1e-9).all()
        assert cv["abstention"][0] <= cv["abstention"][-1]
    for r in res["rows"]:
        assert r["PGD-broken certificates"].startswith("0/")


def test_mnist_files_quick(tmp_path):
    data = _mnist_dir()
    if data is None:
        pytest.skip("MNIST IDX files not found (set LIPLAYERS_DATA)")
    res, _ = _run("mnist_abstain", tmp_path, "--data-dir", data)
    assert res["data"].startswith("MNIST")
