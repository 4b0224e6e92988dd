"""Amortized retraction of BjorckLinear (retract mode): a full retraction every ``retract_every``
optimizer steps, a guaranteed rescaling W = V / max(1, b) in between.

Checked against independent float64 SVDs: σ_max(W) ≤ 1 at every training step (all three ways
of bounding b are exercised), W orthogonal at retraction steps and in eval mode, the eval weight
is polar(V) of the current parameter and is the weight the certificates use, the gradient is
the Euclidean one scaled by 1/max(1, b), and the guaranteed-bound helpers are sound.
"""
import copy
import logging
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import liplayers as L
from liplayers import certify as C
from liplayers.functional import orthogonalization as O
from liplayers.parametrizations import BjorckOrthonormal

F64 = torch.float64
SHAPES = [(24, 24), (40, 16), (16, 40)]  # (in, out): square, wide weight (out < in), tall weight


def _svd(w):
    return torch.linalg.svdvals(w.detach().to(F64))


def _train(layer, steps, lr, dtype, seed=0, record=None):
    """Adam on a regression; ``record(step, layer)`` runs with the training weight of each step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    target = torch.randn(layer.in_features, layer.out_features, generator=g, dtype=dtype)
    for step in range(steps):
        x = torch.randn(32, layer.in_features, generator=g, dtype=dtype)
        y = layer(x)
        if record is not None:
            record(step, layer)
        loss = (y - x @ target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return layer


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype,slack", [(F64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("lr", [3e-3, 3e-2])
def test_training_weight_is_1_lipschitz_at_every_step(shape, dtype, slack, lr):
    """SVD of the weight actually used at every step: σ_max ≤ 1 (+ float rounding), the bound b
    is ≥ the true norm of V, b ≤ 1 + max_drift between retractions, orthogonal at retractions."""
    layer = L.BjorckLinear(*shape, dtype=dtype)
    p = layer.parametrization
    paths, worst = [], []

    def record(step, lay):
        w = lay.weight  # the training weight of this step (cached: no second update)
        s = _svd(w)
        v = lay.parametrizations.weight.original
        paths.append(p.last_path)
        worst.append(float(s[0]))
        assert float(s[0]) <= 1 + slack, (step, p.last_path, float(s[0]))
        assert p.last_bound >= float(_svd(v)[0]) * (1 - slack), (step, p.last_path)
        if p.last_path == "retraction":
            assert float((s - 1).abs().max()) <= (1e-4 if dtype == torch.float32 else 1e-9)
        else:
            assert p.last_bound <= 1 + p.max_drift

    _train(layer, 24, lr, dtype, record=record)
    assert "retraction" in paths and ("free" in paths or "gram" in paths)
    assert paths.count("retraction") <= 24 // p.retract_every + 8 or lr > 1e-2


def test_all_three_bounds_are_used_and_each_is_sound(monkeypatch):
    """Small steps take the free Frobenius bound, larger ones the Gram/Cholesky bound, then a
    retraction every ``retract_every`` changes; each bound is checked against the SVD of V."""
    torch.manual_seed(0)
    layer = L.BjorckLinear(48, 32, dtype=F64, retract_every=6, max_drift=0.25)
    p = layer.parametrization
    v = layer.parametrizations.weight.original
    layer(torch.randn(2, 48, dtype=F64))  # first forward: retraction
    assert p.last_path == "retraction"
    seen = []
    for step, size in enumerate([1e-3, 1e-3, 5e-3, 5e-3, 1e-3, 1e-3, 1e-3]):
        with torch.no_grad():
            v.add_(size * torch.randn_like(v))
        w = layer.weight
        seen.append(p.last_path)
        sv = float(_svd(v)[0])
        assert p.last_bound >= sv
        assert float(_svd(w)[0]) <= 1 + 1e-12
        if p.last_path == "gram":
            assert p.last_bound <= sv * (1 + 5e-3)  # the Cholesky-proved bound is tight
    assert seen[:2] == ["free", "free"] and "gram" in seen[2:4] and seen[5] == "retraction"


def test_retract_every_one_retracts_at_every_change():
    layer = L.BjorckLinear(20, 12, dtype=F64, retract_every=1)
    paths = []
    _train(layer, 6, 1e-3, F64, record=lambda s, lay: paths.append(lay.parametrization.last_path))
    assert paths == ["retraction"] * 6
    layer(torch.randn(1, 20, dtype=F64))
    assert float(O.orthogonality_error(layer.parametrizations.weight.original)) < 1e-9


def test_large_drift_retracts_early():
    layer = L.BjorckLinear(20, 20, dtype=F64, retract_every=100, max_drift=0.05)
    paths = []
    _train(layer, 8, 0.05, F64, record=lambda s, lay: paths.append(lay.parametrization.last_path))
    assert paths.count("retraction") >= 6  # every big Adam step exceeds max_drift


@pytest.mark.parametrize("dtype,tol", [(F64, 1e-9), (torch.float32, 1e-4)])
def test_eval_is_orthogonal_polar_of_current_parameter_and_what_certificates_use(dtype, tol):
    torch.manual_seed(1)
    layer = L.BjorckLinear(40, 16, dtype=dtype)
    _train(layer, 3, 1e-2, dtype)
    v = layer.parametrizations.weight.original
    with torch.no_grad():  # a small step more: bounded, not retracted
        v.add_(1e-3 * torch.randn_like(v))
    layer(torch.randn(1, 40, dtype=dtype))
    assert layer.parametrization.last_path != "retraction"  # V is off the manifold now ...
    assert float(O.orthogonality_error(v)) > 1e-3
    v_before = v.detach().clone()
    layer.eval()
    w = layer.weight
    assert float((_svd(w) - 1).abs().max()) <= tol  # ... and eval is orthogonal anyway
    u, _, vh = torch.linalg.svd(v.detach().to(F64), full_matrices=False)
    torch.testing.assert_close(w.to(F64), u @ vh, atol=10 * tol, rtol=0)  # polar(V_current)
    assert torch.equal(v, v_before)  # eval does not modify the parameter
    assert torch.equal(layer.eval_weight(), w)
    x = torch.randn(5, 40, dtype=dtype)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, w, layer.bias))
    jac = torch.autograd.functional.jacobian(layer, x[:1].to(dtype)).reshape(16, 40)
    true = float(_svd(jac)[0])
    assert true <= layer.lipschitz_bound() <= true * (1 + 1e-6) + 1e-9
    assert torch.equal(layer.to_torch().weight, w)
    net = L.Sequential(layer, L.MaxMin(), L.BjorckLinear(16, 4, dtype=dtype)).eval()
    assert C.lipschitz_bound(net, (40,)) == pytest.approx(
        layer.lipschitz_bound() * net[2].lipschitz_bound(), rel=1e-12)
    layer.train()
    assert float(_svd(layer.weight)[0]) <= 1 + 1e-6  # back to training: rescaled, not the eval weight


def test_gradient_is_euclidean_gradient_scaled_by_the_constant_factor():
    """(With riemannian_grad=False; the default projects this gradient, see test_stiefel.py.)"""
    torch.manual_seed(2)
    layer = L.BjorckLinear(30, 20, dtype=F64, max_drift=0.5, riemannian_grad=False)
    _train(layer, 3, 1e-2, F64)
    x = torch.randn(7, 30, dtype=F64)
    layer.zero_grad()
    y = layer(x)
    p = layer.parametrization
    assert p.last_path in ("free", "gram") and p.last_bound > 1
    (y.square().sum()).backward()
    v = layer.parametrizations.weight.original
    w = (v.detach() / p.last_bound).requires_grad_(True)
    nn.functional.linear(x, w, layer.bias.detach()).square().sum().backward()
    torch.testing.assert_close(v.grad, w.grad / p.last_bound, rtol=1e-12, atol=1e-14)


def test_state_dict_mid_cycle_and_deepcopy():
    torch.manual_seed(3)
    a = L.BjorckLinear(32, 24, dtype=F64)
    _train(a, 6, 1e-2, F64)
    b = L.BjorckLinear(32, 24, dtype=F64)
    b.load_state_dict(a.state_dict())  # a stored parameter off the manifold
    c = copy.deepcopy(a)
    a.eval(), b.eval(), c.eval()
    assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight)
    for lay in (b, c):  # training continues soundly from the loaded / copied state
        lay.train()
        worst = []
        _train(lay, 5, 1e-2, F64, seed=4, record=lambda s, m: worst.append(float(_svd(m.weight)[0])))
        assert max(worst) <= 1 + 1e-12


def test_pickle_mid_cycle_and_state_pickled_by_an_earlier_version(tmp_path):
    torch.manual_seed(5)
    a = L.BjorckLinear(24, 12, dtype=F64)
    _train(a, 5, 1e-2, F64)
    torch.save(a, tmp_path / "layer.pt")
    b = torch.load(tmp_path / "layer.pt", weights_only=False)
    a.eval(), b.eval()
    assert torch.equal(a.weight, b.weight)
    p = b.parametrization  # as pickled before the amortized retraction: without its attributes
    new = ("retract_every", "max_drift", "_train_key", "_train_scale", "_since", "_anchor", "_anchor_bound",
           "_fro", "_extremes", "last_bound", "last_path")
    old = {k: v for k, v in p.__dict__.items() if k not in new}
    old["_probe"] = torch.randn(12, dtype=F64)
    restored = BjorckOrthonormal.__new__(BjorckOrthonormal)
    restored.__setstate__(old)
    assert restored.retract_every == BjorckOrthonormal().retract_every and not hasattr(restored, "_probe")
    b.parametrizations.weight[0] = restored
    b.train()
    worst = []
    _train(b, 4, 1e-2, F64, record=lambda s, m: worst.append(float(_svd(m.weight)[0])))
    assert max(worst) <= 1 + 1e-12 and restored.last_path != ""


def test_compiled_training_matches_eager_on_every_path():
    """aot_eager: the free, Gram and retraction paths give eager's outputs and gradients; no
    recompilation when the path (and the scale) changes from step to step."""
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._logging.set_logs(dynamo=logging.ERROR)
    torch._dynamo.reset()
    torch.manual_seed(4)
    eager = L.Sequential(L.BjorckLinear(12, 10, retract_every=3), L.MaxMin(), L.BjorckLinear(10, 4)).double()
    cmod = copy.deepcopy(eager)
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(cmod, backend=counter, dynamic=False)
    opt_e = torch.optim.Adam(eager.parameters(), lr=1e-2)
    opt_c = torch.optim.Adam(cmod.parameters(), lr=1e-2)
    x = torch.randn(6, 12, dtype=F64)
    paths, frames = set(), []
    warnings.simplefilter("ignore")  # (restored after the test) Dynamo's tracing warns about torch internals
    for step in range(7):
        ye, yc = eager(x), compiled(x)
        torch.testing.assert_close(yc, ye, rtol=1e-12, atol=1e-12)
        ye.square().sum().backward()
        yc.square().sum().backward()
        for pe, pc in zip(eager.parameters(), cmod.parameters()):
            torch.testing.assert_close(pc.grad, pe.grad, rtol=1e-12, atol=1e-12)
        paths.add(cmod[0].parametrization.last_path)
        for o in (opt_e, opt_c):
            o.step()
            o.zero_grad()
        frames.append(counter.frame_count)
    assert len(paths) >= 2 and frames[-1] == frames[1]
    eager.eval(), cmod.eval()
    torch.testing.assert_close(compiled(x), eager(x), rtol=1e-12, atol=1e-12)
    torch._dynamo.reset()


def test_parametrization_accessor_and_deprecated_alias():
    lin = L.BjorckLinear(4, 3)
    assert isinstance(lin.parametrization, BjorckOrthonormal)
    assert lin.parametrization is lin.parametrizations.weight[0]
    with pytest.warns(DeprecationWarning, match="parametrization"):
        assert lin.orthonormalizer is lin.parametrization
    spec = L.SpectralLinear(4, 3)
    assert spec.parametrization is spec.parametrizations.weight[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        L.SpectralLinear(4, 3, n_power_iterations=2)  # no deprecation warning from the layer itself


@pytest.mark.parametrize("kwargs,match", [
    (dict(retract_every=0), "retract_every"), (dict(retract_every=True), "retract_every"),
    (dict(retract_every=1.5), "retract_every"), (dict(max_drift=0.0), "max_drift"),
    (dict(max_drift=2.0), "max_drift"), (dict(mode="differentiable", retract_every=4), "mode='retract' only"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        L.BjorckLinear(4, 4, **kwargs)


def test_bfloat16_layer_trains_and_eval_is_orthogonal():
    layer = L.BjorckLinear(32, 32, dtype=torch.bfloat16)
    _train(layer, 6, 1e-2, torch.bfloat16)
    layer.eval()
    assert float((_svd(layer.weight) - 1).abs().max()) < 2e-2


# ---- the guaranteed-bound helpers -----------------------------------------------------------
def _near_orthogonal(r, n, drift, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=F64))[0].T
    return (q + drift * torch.randn(r, n, generator=g, dtype=F64) / n ** 0.5).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("drift", [0.0, 0.05, 0.5])
def test_gram_eigenvalue_bound_is_sound_and_tight(dtype, drift):
    for seed in range(3):
        v = _near_orthogonal(64, 150, drift, seed, dtype)
        a = O.gram_symmetric(v)
        lam = float(torch.linalg.eigvalsh(a.to(F64))[-1])
        b = O.gram_eigenvalue_bound(a)
        ev = torch.linalg.eigvalsh(a.to(F64))
        assert lam <= b <= lam + 0.03 * float(ev[-1] - ev[0]) + 1e-4  # within 3% of the spectral width


def test_gram_eigenvalue_bound_survives_a_wrong_estimate(monkeypatch):
    """Soundness never depends on the Lanczos estimate: a wildly low one only costs failed
    factorizations and ends at the unconditional Frobenius bound."""
    monkeypatch.setattr(O, "lanczos_extremes", lambda s, steps=12: (0.0, 0.0))
    v = _near_orthogonal(40, 90, 0.3, 0, F64)
    a = O.gram(v)
    lam = float(torch.linalg.eigvalsh(a)[-1])
    assert O.gram_eigenvalue_bound(a) >= lam


def test_polar_step_gain_is_the_maximum_over_the_interval():
    rng = np.random.default_rng(0)
    for _ in range(50):
        k = rng.normal(size=3) * np.array([1.0, 1.0, 0.5]) + np.array([1.5, -0.5, 0.0])
        lam = float(rng.uniform(0.1, 3.0))
        x = np.linspace(0.0, lam, 200001)
        dense = np.max(np.sqrt(x) * np.abs(k[0] + k[1] * x + k[2] * x * x))
        got = O.polar_step_gain(k, lam)
        assert dense <= got <= dense * (1 + 1e-6)
    assert O.polar_step_gain(O.step_coefficients(3), 4.0) == pytest.approx(1.0, abs=1e-11)
    for e in (0.01, 0.1, 0.3):  # a bound of the norm after one step, on real matrices
        v = _near_orthogonal(30, 70, 2 * e, 1, F64)
        a = O.gram(v)
        lam = float(torch.linalg.eigvalsh(a)[-1])
        for order, est in ((3, None), (5, e), (5, None)):
            w = O.bjorck_step(v, a, order=order, e=est)
            assert float(_svd(w)[0]) <= O.polar_step_gain(O.step_coefficients(order, est), lam) * (1 + 1e-12)


def test_gram_symmetric_equals_gram_and_is_exactly_symmetric():
    for shape in ((300, 700), (700, 300), (50, 80)):
        w = torch.randn(*shape)
        a = O.gram_symmetric(w)
        torch.testing.assert_close(a, O.gram(w), rtol=1e-5, atol=1e-4)
        assert torch.equal(a, a.mT)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_shape", [(), (5,), (2, 3)])
def test_training_forward_scales_the_output_exactly_like_the_scaled_weight(bias, batch_shape):
    """In training the layer computes s·(x Vᵀ) + b instead of x (sV)ᵀ + b (no scaled copy of the
    weight kept for backward): values and gradients equal the scaled-weight computation."""
    torch.manual_seed(3)
    layer = L.BjorckLinear(12, 7, bias=bias, dtype=F64, max_drift=0.5, riemannian_grad=False)
    _train(layer, 3, 3e-2, F64)
    p, v = layer.parametrization, layer.parametrizations.weight.original
    x = torch.randn(*batch_shape, 12, dtype=F64, requires_grad=True)
    y = layer(x)
    s = p.train_scale(v)
    assert p.last_path in ("free", "gram") and s < 1 - 1e-3  # the scaled path is exercised
    g = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, v) + ((layer.bias,) if bias else ()), g)
    x2 = x.detach().clone().requires_grad_(True)
    y2 = nn.functional.linear(x2, v * s, layer.bias)
    grads2 = torch.autograd.grad(y2, (x2, v) + ((layer.bias,) if bias else ()), g)
    torch.testing.assert_close(y, y2, rtol=1e-13, atol=1e-14)
    for a, b in zip(grads, grads2):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-14)
    assert torch.autograd.gradcheck(layer, (x.detach().clone().requires_grad_(True),))
    with torch.nn.utils.parametrize.cached():  # the cached-weight path gives the same map
        torch.testing.assert_close(layer(x), y, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("order", [3, 5])
def test_no_grad_step_and_gram_equal_the_differentiable_ones(order):
    """The retraction's in-place (no-autograd) Gram matrix and polar step equal the autograd ones."""
    g = torch.Generator().manual_seed(0)
    for shape in ((300, 520), (520, 300), (40, 60)):
        w = torch.randn(*shape, generator=g, dtype=F64) / shape[1] ** 0.5
        a = O.gram_symmetric(w)
        a_grad = O.gram_symmetric(w.clone().requires_grad_(True))
        assert torch.equal(a, a_grad.detach())
        a = a / float(torch.linalg.eigvalsh(a)[-1])
        w = w / float(torch.linalg.eigvalsh(O.gram(w))[-1]) ** 0.5
        fast = O.bjorck_step(w, a, order=order, e=0.4)
        slow = O.bjorck_step(w.clone().requires_grad_(True), a, order=order, e=0.4)
        torch.testing.assert_close(fast, slow.detach(), rtol=1e-13, atol=1e-13)
        assert slow.requires_grad


def test_lanczos_estimates_agree_across_precisions():
    """The estimates run in the precision of the matrix (float32: no float64 copy of A) from the same
    start vector: the float32 Ritz values match the float64 ones."""
    for seed in range(3):
        v = _near_orthogonal(64, 150, 0.05, seed, F64)
        s = O.gram(v)
        s.diagonal().sub_(1.0)
        lo, hi = O.lanczos_extremes(s)
        lo32, hi32 = O.lanczos_extremes(s.float())
        width = hi - lo
        assert abs(lo32 - lo) <= 1e-4 * width and abs(hi32 - hi) <= 1e-4 * width
