"""Renamed arguments and attributes: the old names still work, with a DeprecationWarning, and mean the same.

One name per concept: ``n_power_iterations`` (power-iteration counts, torch's name), ``eps`` (a
radius), ``estimator`` / ``num_probes`` (exact or randomized computation, number of random
probes), ``lam`` (the weight of a regularizer), ``input_shape`` (one sample's shape) vs
``input_size`` (a spatial size), ``parametrization`` (a layer's weight map).
"""
import pytest
import torch
from torch import nn

import liplayers as L
from liplayers import io as lio
from liplayers.certify import lipschitz_lower_bound
from liplayers.functional import power_iteration
from liplayers.functional.conv import conv2d_lipschitz_bound, conv2d_operator, conv_operator_power_iteration
from liplayers.losses import CertificateRegularizedLoss, GloRoLoss
from liplayers.parametrizations import SpectralNormalized
from liplayers.parametrizations.operator_norm import OperatorNormalized
from liplayers.regularizers import (FisherEigenvalueLoss, ISOLoss, JacobianLoss, fisher_max_eigenvalue, iso_penalty,
                                    iso_penalty_stereographic, iso_schedule, jacobian_penalty)
from liplayers.regularizers.iso_variants import EuclideanISOLoss, euclidean_iso_penalty
from liplayers.utils import accepts_renamed_kwargs, renamed_attribute, renamed_kwargs

F64 = torch.float64


def _old(make):
    """``make()`` with an old name: exactly one DeprecationWarning that names the new one."""
    with pytest.warns(DeprecationWarning, match="is deprecated, use") as rec:
        out = make()
    assert len([w for w in rec if issubclass(w.category, DeprecationWarning)]) >= 1
    return out


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).to(F64)


# ---- the helper ---------------------------------------------------------------------------------
def test_helper_renames_warns_and_refuses_both_names():
    @accepts_renamed_kwargs({"old": "new"})
    def f(a, new=1):
        return a, new

    assert f(1, new=2) == (1, 2) and f(1, 3) == (1, 3)
    with pytest.warns(DeprecationWarning, match="f: the argument 'old' is deprecated, use 'new'") as rec:
        assert f(1, old=4) == (1, 4)
    assert rec[0].filename == __file__  # the warning points at the caller
    with pytest.raises(TypeError, match="both 'old'"):
        f(1, old=4, new=5)
    kw = {"old": 1, "other": 2}
    with pytest.warns(DeprecationWarning):
        assert renamed_kwargs(kw, {"old": "new"}, "g") == {"other": 2, "new": 1}

    class A:
        new = 1
        old = renamed_attribute("old", "new")

    a = A()
    with pytest.warns(DeprecationWarning, match="A: the attribute 'old' is deprecated, use 'new'"):
        a.old = 7
    assert a.new == 7


# ---- power-iteration counts ---------------------------------------------------------------------
def test_power_iteration_counts():
    w = torch.diag(torch.tensor([3.0, 1.0], dtype=F64))
    u0 = torch.tensor([1.0, 1.0], dtype=F64)
    assert torch.equal(_old(lambda: power_iteration(w, u0, iterations=7))[0],
                       power_iteration(w, u0, n_power_iterations=7)[0])
    op = conv2d_operator(torch.randn(2, 2, 3, 3, dtype=F64), padding=1)
    u = torch.randn(1, 2, 5, 5, dtype=F64)
    assert torch.equal(_old(lambda: conv_operator_power_iteration(op, u, iterations=4))[0],
                       conv_operator_power_iteration(op, u, n_power_iterations=4)[0])
    net = nn.Sequential(nn.Linear(3, 70, dtype=F64))
    x = torch.randn(2, 3, dtype=F64)
    kw = dict(steps=0, max_exact_outputs=1, generator=None)
    torch.manual_seed(1)
    old = _old(lambda: lipschitz_lower_bound(net, x, iterations=5, **kw))
    torch.manual_seed(1)
    assert old == lipschitz_lower_bound(net, x, n_power_iterations=5, **kw)


@pytest.mark.parametrize("make,attr", [
    (lambda **kw: L.SOCConv2d(2, 2, 3, **kw), "power_iterations"),
    (lambda **kw: L.LinearResidualConv2d(2, 2, 3, **kw), "power_iterations"),
    (lambda **kw: SpectralNormalized(torch.Size((3, 4)), **kw), "train_iterations"),
])
def test_layers_power_iterations(make, attr):
    old_kw = {attr: 4}
    layer = _old(lambda: make(**old_kw))
    assert layer.n_power_iterations == 4 and make(n_power_iterations=4).n_power_iterations == 4
    assert _old(lambda: getattr(layer, attr)) == 4
    with pytest.raises(TypeError, match="both"):
        make(n_power_iterations=2, **old_kw)


def test_spectral_conv_power_iterations_and_parametrization():
    layer = _old(lambda: L.SpectralConv2d(2, 3, 3, power_iterations=5))
    assert isinstance(layer.parametrization, OperatorNormalized)
    assert layer.parametrization.n_power_iterations == 5
    assert _old(lambda: layer.normalizer) is layer.parametrization
    assert _old(lambda: layer.parametrization.iterations) == 5
    op = _old(lambda: OperatorNormalized((3, 3), (1, 1), 0, (1, 1), "zeros", 1, None, iterations=2))
    assert op.n_power_iterations == 2


def test_parametrization_accessor_of_every_parametrized_layer():
    layers = [L.SpectralConv2d(2, 2, 3), L.RKOConv2d(2, 2, 3), L.LInfLinear(3, 2), L.AOLLinear(3, 2),
              L.AOLConv2d(2, 2, 3), L.CholeskyLinear(3, 2), L.BROLinear(3, 2), L.LastLayerNormalizedLinear(3, 2)]
    for layer in layers:
        assert layer.parametrization is layer.parametrizations.weight[0], type(layer).__name__
    linf = layers[2]
    assert _old(lambda: linf.projection) is linf.parametrization


# ---- eps, estimator / num_probes, lam -----------------------------------------------------------
def test_iso_eps_and_lam():
    net, x = _mlp(), torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(_old(lambda: iso_penalty(net, x, epsilon=0.5)), iso_penalty(net, x, eps=0.5))
    torch.testing.assert_close(_old(lambda: iso_penalty_stereographic(net, x, epsilon=0.5)),
                               iso_penalty_stereographic(net, x, eps=0.5))
    torch.testing.assert_close(_old(lambda: euclidean_iso_penalty(net, x, epsilon=0.5)),
                               euclidean_iso_penalty(net, x, eps=0.5))
    assert _old(lambda: iso_schedule(1, 3, eta_min=0.001, eta_max=0.004)) == iso_schedule(1, 3, 0.001, 0.004)
    for cls in (ISOLoss, EuclideanISOLoss):
        loss = _old(lambda: cls(epsilon=0.5, eta_min=0.001, eta_max=0.004, num_epochs=3))
        assert (loss.eps, loss.lam_min, loss.lam_max, loss.lam) == (0.5, 0.001, 0.004, 0.001)
        assert _old(lambda: loss.epsilon) == 0.5 and _old(lambda: loss.eta) == loss.lam
        assert _old(lambda: loss.eta_min) == 0.001 and _old(lambda: loss.eta_max) == 0.004
        fixed = _old(lambda: cls(0.5, eta=0.3))
        assert fixed.lam == 0.3 and fixed.lam_fixed == 0.3
        y = torch.tensor([0, 1, 2])
        torch.testing.assert_close(fixed(net, x, y), cls(0.5, lam=0.3)(net, x, y))


def test_jacobian_estimator_and_num_probes():
    net, x = _mlp(), torch.randn(3, 4, dtype=F64)
    torch.testing.assert_close(_old(lambda: jacobian_penalty(net, x, method="exact")),
                               jacobian_penalty(net, x, estimator="exact"))
    g = torch.Generator().manual_seed(0)
    old = _old(lambda: jacobian_penalty(net, x, num_projections=3, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(old, jacobian_penalty(net, x, num_probes=3, generator=g))
    loss = _old(lambda: JacobianLoss(0.1, num_projections=2, method="exact"))
    assert (loss.num_probes, loss.estimator) == (2, "exact")
    assert _old(lambda: loss.num_projections) == 2 and _old(lambda: loss.method) == "exact"


def test_fisher_eigenvalue_lam_and_power_iterations():
    net, x = _mlp(), torch.randn(3, 4, dtype=F64)
    kw = dict(generator=None)
    torch.manual_seed(3)
    old = _old(lambda: fisher_max_eigenvalue(net, x, "power", iterations=5, **kw))
    torch.manual_seed(3)
    torch.testing.assert_close(old, fisher_max_eigenvalue(net, x, "power", n_power_iterations=5, **kw))
    loss = _old(lambda: FisherEigenvalueLoss(eta=2.0, iterations=3))
    assert (loss.lam, loss.n_power_iterations) == (2.0, 3)
    assert _old(lambda: loss.eta) == 2.0 and _old(lambda: loss.iterations) == 3


def test_certified_training_losses_lam():
    f, y = torch.tensor([[2.0, 0.5, 1.0], [0.1, 0.9, 0.3]]), torch.tensor([0, 1])
    gloro = _old(lambda: GloRoLoss(0.2, trades=1.5))
    assert gloro.lam == 1.5 and _old(lambda: gloro.trades) == 1.5
    assert gloro(f, y, 1.0) == GloRoLoss(0.2, lam=1.5)(f, y, 1.0)
    cr = _old(lambda: CertificateRegularizedLoss(gamma=0.7))
    assert cr.lam == 0.7 and _old(lambda: cr.gamma) == 0.7
    assert cr(f, y, 1.0) == CertificateRegularizedLoss(lam=0.7)(f, y, 1.0)


# ---- input_shape (one sample) vs input_size (spatial) -------------------------------------------
def test_input_shape_of_conv_bounds():
    k = torch.randn(3, 2, 3, 3, dtype=F64)
    new = conv2d_lipschitz_bound(k, input_shape=(2, 8, 8), padding=1, padding_mode="circular")
    assert _old(lambda: conv2d_lipschitz_bound(k, input_size=(2, 8, 8), padding=1, padding_mode="circular")) == new
    layer = L.CayleyConv2d(2, 2, 3).eval()
    torch.testing.assert_close(_old(lambda: layer.eval_weight(input_size=(2, 6, 6))),
                               layer.eval_weight(input_shape=(2, 6, 6)))


def test_io_load_moves_attributes_saved_under_old_names(tmp_path):
    """A whole-model file written before the renames keeps the old attribute names: load renames them."""
    model = nn.Sequential(L.SOCConv2d(2, 2, 3), nn.Flatten(), L.SpectralLinear(2 * 4 * 4, 3)).eval()
    x = torch.randn(2, 2, 4, 4)
    want = model(x)
    soc, spectral = model[0], model[2].parametrizations.weight[0]
    soc.__dict__["power_iterations"] = soc.__dict__.pop("n_power_iterations")  # as an older version stored it
    spectral.__dict__["train_iterations"] = spectral.__dict__.pop("n_power_iterations")
    lio.save(model, tmp_path / "old.pt")
    loaded = lio.load(tmp_path / "old.pt")
    assert loaded[0].n_power_iterations == 1 and "power_iterations" not in vars(loaded[0])
    assert loaded[2].parametrizations.weight[0].n_power_iterations == 3
    torch.testing.assert_close(loaded(x), want)
    loaded.train()
    loaded(x)  # training reads the renamed attributes
