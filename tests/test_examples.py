"""Smoke tests of the examples (``examples/*.py --quick``), run in-process with a tmp ``--out``.

Each checks that the figures and results.json are written and that the numbers are sane:
closed forms against Monte Carlo, certificates never broken by attacks, certified ≤ robust
≤ clean accuracy.
"""
import importlib.util
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")
pytest.importorskip("scipy")

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _load(name):
    if EXAMPLES not in sys.path:
        sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location(f"_example_{name}", os.path.join(EXAMPLES, f"{name}.py"))
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
        on_disk = json.load(fh)
    for fig in res["figures"]:
        path = out / fig
        assert path.is_file() and path.stat().st_size > 5000, fig
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return res, on_disk


def test_gaussian_tradeoff(tmp_path):
    res, disk = _run("gaussian_tradeoff", tmp_path)
    key = {r["point"]: r for r in res["key_points"]}
    # Picot et al. (2022) footnote 3: α*_nat ≈ 1.814 → (0.784, 0.183); α*_adv ≈ 2.783 → (0.608, 0.309)
    nat = key["max natural (Σ⁻¹μ)"]
    assert abs(nat["alpha"] - 1.814) < 0.01 and abs(nat["natural"] - 0.784) < 1e-3
    assert abs(nat["adversarial"] - 0.183) < 1e-3
    adv = key["max adversarial"]
    assert abs(adv["alpha"] - 2.783) < 0.01 and abs(adv["natural"] - 0.608) < 1e-3
    assert abs(adv["adversarial"] - 0.309) < 1e-3
    # closed forms (eqs. 20–21) vs Monte Carlo (50k samples per class: σ ≈ 0.002)
    for r in res["monte_carlo"]:
        assert abs(r["natural (closed form)"] - r["natural (MC)"]) < 0.01
        assert abs(r["adversarial (closed form)"] - r["adversarial (MC)"]) < 0.01
    # MAA is the best average of any θ, in particular of every risk minimizer
    for sols in res["solutions"].values():
        for s in sols:
            assert s["average"] <= res["maa"] + 1e-12
            assert s["adversarial"] <= s["natural"] + 1e-12  # P'_e ≥ P_e
    assert disk["maa"] == pytest.approx(res["maa"])


def test_gaussian_inner_maximization_is_at_an_endpoint():
    """The exact inner max used by the risks dominates every h' in [h − ε‖θ‖, h + ε‖θ‖]."""
    g = _load("gaussian_tradeoff")
    rng = np.random.default_rng(0)
    x, y = g.sample(200, rng)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for method in g.METHODS:
        theta = torch.tensor([-3.0, 7.0], dtype=torch.float64)
        h = xt @ theta
        delta = g.EPS * theta.norm()
        best = torch.maximum(g._divergence(method, h, h - delta), g._divergence(method, h, h + delta))
        for t in torch.linspace(-1, 1, 41, dtype=torch.float64):
            assert bool((g._divergence(method, h, h + t * delta) <= best + 1e-12).all())


def test_quadratic_spheres(tmp_path):
    res, _ = _run("quadratic_spheres", tmp_path)
    rows = {r["model"]: r for r in res["rows"]}
    for r in rows.values():
        assert r["violations"] == 0  # no attack beats a certificate
        assert r["attacked"] > 0
        for e in (0.05, 0.1, 0.14, 0.15):
            assert r[f"cert@{e}"] <= 1 - r["test error"] + 1e-12
    assert rows["(b) Lipschitz quadratic"]["test error"] == 0.0
    # an orthogonal (±1) readout initialized with the wrong sign is perfectly wrong
    assert rows["(b'') ... readout orthogonal, w0=−1"]["test error"] == 1.0
    # 0.15 = half the gap is the most one can certify on both spheres: never all points
    for r in rows.values():
        assert r["cert@0.15"] <= 0.5 + 0.05


def test_quadratic_certificate_is_the_exact_distance_for_the_lipschitz_quadratic():
    qs = _load("quadratic_spheres")
    torch.manual_seed(0)
    d = 20
    net = qs.QuadraticNet(d, 2 * d, orthogonal=True).double().eval()
    with torch.no_grad():
        net.readout.weight.fill_(2.0)
        net.readout.bias.fill_(-2.0 * 1.1 ** 2)  # boundary: sphere of radius 1.1
    x, _ = qs.sample_spheres(64, d, 1.3, torch.Generator().manual_seed(1), dtype=torch.float64)
    r = net.certified_radius(x, 1.3)
    exact = (x.norm(dim=1) - 1.1).abs()
    assert bool((r <= exact).all()) and bool((r >= exact * (1 - 1e-5)).all())  # rounding allowance only
    # just beyond the radius, along the normal, the decision flips (the certificate is tight)
    x_cross = x * ((1.1 + (1.1 - x.norm(dim=1)) * 1e-3) / x.norm(dim=1))[:, None]
    with torch.no_grad():
        assert bool(((net(x) > 0) != (net(x_cross) > 0)).all())


def test_curvature_example(tmp_path):
    res, _ = _run("curvature", tmp_path)
    assert len(res["rows"]) == 2
    for r in res["rows"]:
        assert 0 <= r["AUC Σκ̄"] <= 1 and 0 <= r["AUC eq.7 score"] <= 1
        assert r["AUC Σκ̄"] + r["AUC eq.7 score"] == pytest.approx(1.0)
        assert r["n perturbed"] > 0 and math.isfinite(r["mean κ̄ clean"])
    for prof in res["profiles"].values():
        assert len(prof) == 63 and np.all(np.diff(prof) >= -1e-12)  # d − 1 sorted curvatures


def test_digits_certified(tmp_path):
    res, _ = _run("digits_certified", tmp_path)
    assert len(res["rows"]) >= 4
    for r in res["rows"]:
        assert r["violations"] == 0 and r["checked"] > 0
        accs = [r["clean acc"]] + [r[k] for k in ("cert@0.1", "cert@0.25", "cert@0.5", "cert@1")]
        assert all(a >= b - 1e-12 for a, b in zip(accs, accs[1:]))  # certified accuracy decreases with ε
        assert r["L bound"] >= 1.0 - 1e-6  # a GNP net is (numerically) exactly 1-Lipschitz, never less


def test_iso_vs_parseval(tmp_path):
    res, _ = _run("iso_vs_parseval", tmp_path, "--methods", "vanilla,Parseval,GNP,FIRE")
    for method, runs in res["runs"].items():
        assert len(runs) == 2  # variability needs at least two seeds
        for run in runs:
            assert run["clean"] >= run["PGD 0.1"] >= run["PGD 0.2"] >= run["PGD 0.3"] - 1e-12
            # sound certificates: certified accuracy can never exceed robust accuracy under attack
            assert run["cert L∞ 0.1"] <= run["PGD 0.1"] + 1e-12
