"""Tests for the ISO partial-isometry regularizer (liplayers.regularizers.iso)."""
import math

import pytest
import torch
from torch import nn

from liplayers.functional.geometry import delta_m
from liplayers.regularizers import (
    ISOLoss,
    iso_penalty,
    iso_penalty_stereographic,
    iso_schedule,
    pullback_fisher_metric,
    sqrt_prob_jacobian,
)

D64 = torch.float64


def _gen(s=0):
    return torch.Generator().manual_seed(s)


class IsometricAt(nn.Module):
    """A model satisfying J_mu J_mu^T = (c K)^2 (I - mu mu^T/4) exactly at x0 (c = 1: partial isometry).

    logits(x) = 2 log w(x), w(x) = s0 + A (x - x0), so sqrt(p) = w/|w| (softmax of 2 log w).
    At x0, d(w/|w|)/dx = (I - s0 s0^T) A = A when the columns of A lie in s0's tangent space.
    With A = (c K / 2) U V^T (U: orthonormal basis of s0-perp, V: n x m with orthonormal columns)
    J_mu = 2A, so J_mu J_mu^T = c^2 K^2 U U^T = c^2 K^2 (I - mu mu^T/4).
    """

    def __init__(self, n, C, K, c=1.0, seed=0):
        super().__init__()
        g = _gen(seed)
        s0 = torch.rand(C, generator=g, dtype=D64) + 0.2
        self.s0 = s0 / s0.norm()
        Q, _ = torch.linalg.qr(torch.cat([self.s0[:, None], torch.randn(C, C - 1, generator=g, dtype=D64)], 1))
        U = Q[:, 1:]
        V, _ = torch.linalg.qr(torch.randn(n, C - 1, generator=g, dtype=D64))
        self.register_buffer("A", c * K / 2 * U @ V.T)
        self.x0 = torch.rand(n, generator=g, dtype=D64)

    def forward(self, x):
        return 2 * torch.log(self.s0 + (x.flatten(1) - self.x0) @ self.A.T)


class BinaryIsometry(nn.Module):
    """Two classes, isometric *everywhere* (in the strip where the angle stays in (0, pi/2)).

    sqrt(p) = (cos phi, sin phi), phi = phi0 + (K/2) v.x with |v| = 1: J_mu = K (-sin, cos) v^T.
    """

    def __init__(self, n, K, seed=0):
        super().__init__()
        v = torch.randn(n, generator=_gen(seed), dtype=D64)
        self.v, self.K = v / v.norm(), K

    def forward(self, x):
        phi = math.pi / 4 + self.K / 2 * (x.flatten(1) @ self.v)
        return torch.stack([2 * torch.log(torch.cos(phi)), 2 * torch.log(torch.sin(phi))], -1)


def _mlp(n=6, C=4, seed=0, width=16):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, C)).to(D64)
    with torch.no_grad():
        net[0].weight.mul_(2.0)
    return net


# ----------------------------------------------------------------- the isometric model
@pytest.mark.parametrize("C,n,eps", [(2, 5, 1.0), (3, 8, 0.5), (4, 7, 0.5), (10, 12, 2.0)])
@pytest.mark.parametrize("deviation", ["frobenius", "gaussian"])
def test_alpha_vanishes_on_partial_isometry(C, n, eps, deviation):
    K = delta_m(C) / eps
    model = IsometricAt(n, C, K, seed=C)
    x = model.x0[None].repeat(3, 1)
    alpha = iso_penalty(model, x, eps, deviation=deviation).detach()  # default scale = delta_m / eps
    assert alpha.shape == (3,)
    assert float(alpha.max()) <= 1e-8
    # explicit scale with a non-default K
    model2 = IsometricAt(n, C, 3.7, seed=C + 1)
    assert float(iso_penalty(model2, model2.x0[None], eps, scale=3.7, deviation=deviation).max()) <= 1e-8


@pytest.mark.parametrize("C,n", [(3, 8), (5, 9)])
def test_pulled_back_metric_eigenvalues_are_K_squared_where_alpha_vanishes(C, n):
    K, eps = 2.5, 0.4
    model = IsometricAt(n, C, K, seed=7)
    x = model.x0[None]
    assert float(iso_penalty(model, x, eps, scale=K)) <= 1e-8
    G = pullback_fisher_metric(model, x)[0]
    ev = torch.linalg.eigvalsh(G)
    m = C - 1
    torch.testing.assert_close(ev[-m:], torch.full((m,), K * K, dtype=D64), rtol=1e-10, atol=1e-10)
    assert float(ev[:-m].abs().max()) < 1e-10
    # and a model with the wrong scale does not have this spectrum
    wrong = IsometricAt(n, C, K, c=1.2, seed=7)
    ev_w = torch.linalg.eigvalsh(pullback_fisher_metric(wrong, x)[0])
    assert float((ev_w[-m:] - K * K).abs().min()) > 0.4 * K * K


def test_binary_model_isometric_everywhere():
    K, eps = 1.3, 0.7
    model = BinaryIsometry(6, K)
    x = 0.3 * torch.randn(20, 6, generator=_gen(1), dtype=D64)
    assert float(iso_penalty(model, x, eps, scale=K).max()) <= 1e-8
    assert float(iso_penalty(model, x, eps, scale=1.1 * K).min()) > 1e-3


@pytest.mark.parametrize("c", [0.5, 1.1, 2.0])
def test_alpha_positive_otherwise_with_exact_value(c):
    """A = (c^2 - 1) K^2 P with rank-m projector P: alpha = eps^2 K^2 |c^2 - 1| sqrt(m)."""
    C, n, eps, K = 4, 7, 0.5, 3.0
    model = IsometricAt(n, C, K, c=c, seed=2)
    x = model.x0[None]
    m = C - 1
    expected = eps ** 2 * K ** 2 * abs(c * c - 1)
    torch.testing.assert_close(iso_penalty(model, x, eps, scale=K),
                               torch.tensor([expected * math.sqrt(m)], dtype=D64))
    # gaussian deviation: (tr A)^2 + 2 |A|_F^2 = ((c^2-1)K^2)^2 (m^2 + 2m)
    torch.testing.assert_close(iso_penalty(model, x, eps, scale=K, deviation="gaussian"),
                               torch.tensor([expected * math.sqrt(m * m + 2 * m)], dtype=D64))
    torch.testing.assert_close(iso_penalty(model, x, eps, scale=K, squared=True),
                               torch.tensor([expected ** 2 * m], dtype=D64))
    # and a generic network is far from an isometry
    net = _mlp()
    assert float(iso_penalty(net, torch.randn(5, 6, generator=_gen(3), dtype=D64), 0.5).detach().min()) > 1e-3


def test_default_scale_is_delta_m_over_eps():
    net = _mlp(C=5)
    x = torch.randn(4, 6, generator=_gen(4), dtype=D64)
    eps = 0.8
    torch.testing.assert_close(iso_penalty(net, x, eps), iso_penalty(net, x, eps, scale=delta_m(5) / eps))
    assert not torch.allclose(iso_penalty(net, x, eps), iso_penalty(net, x, eps, scale=(math.pi / 2) / eps))


def test_exact_jacobian_matches_autograd():
    net = _mlp()
    x = torch.randn(3, 6, generator=_gen(5), dtype=D64)
    J = sqrt_prob_jacobian(net, x)
    assert J.shape == (3, 4, 6)
    for b in range(3):
        ref = torch.autograd.functional.jacobian(
            lambda z: 2 * torch.softmax(net(z[None])[0], -1).sqrt(), x[b])
        torch.testing.assert_close(J[b], ref)
    # mu^T J = 0 (|mu| = 2 is constant): J maps into the tangent space
    mu = 2 * torch.softmax(net(x), -1).sqrt()
    assert float(torch.einsum("bc,bcn->bn", mu, J).detach().abs().max()) < 1e-12


# ----------------------------------------------------------------- randomized estimator
def _draws(model, x, R, **kw):
    """R independent draws per sample in one call: the batch is replicated R times and every
    replica gets its own probes (the model treats samples independently).  Shape (R, B)."""
    B = x.shape[0]
    return iso_penalty(model, x.repeat(R, *([1] * (x.dim() - 1))), estimator="randomized",
                       **kw).detach().reshape(R, B)


@pytest.mark.parametrize("deviation,k", [("frobenius", 2), ("frobenius", 3), ("gaussian", 1), ("gaussian", 2)])
def test_randomized_is_unbiased_for_the_squared_penalty(deviation, k):
    """Mean of R = 4000 independent draws vs the exact alpha^2, within 5 standard errors (CLT).

    The standard error is estimated from the same draws (|z| > 5 has probability < 1e-6 for
    an unbiased estimator); the biased plug-in estimator fails this by > 20 standard
    errors (next test), so the tolerance has power.
    """
    net = _mlp()
    x = torch.randn(3, 6, generator=_gen(6), dtype=D64)
    kw = dict(eps=0.5, scale=0.3, squared=True, deviation=deviation)
    exact = iso_penalty(net, x, **kw).detach()
    R = 4000
    draws = _draws(net, x, R, num_probes=k, generator=_gen(7), **kw)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(R)
    assert bool(((mean - exact).abs() <= 5 * se).all()), (mean, exact, se)
    assert float((se / exact).max()) < 0.03  # SE is at most 3% of the value


def test_plugin_estimator_would_be_biased():
    """Power of the test above: |mean(u u^T) - C|_F^2 (plug-in) is detectably biased."""
    from liplayers.regularizers.iso import _jvp_probes, _target

    net = _mlp()
    x = torch.randn(3, 6, generator=_gen(6), dtype=D64)
    K, R = 0.3, 4000
    exact = iso_penalty(net, x, 1.0, scale=K, squared=True).detach()
    mu, u, _ = _jvp_probes(net, x.repeat(R, 1), 2, "rademacher", _gen(8))
    M = torch.einsum("ibc,ibd->bcd", u, u) / 2
    draws = ((M - _target(mu, K)) ** 2).sum((1, 2)).detach().reshape(R, 3)
    se = draws.std(0) / math.sqrt(R)
    assert float(((draws.mean(0) - exact) / se).min()) > 20


def test_randomized_consistent_for_alpha_and_deterministic():
    net = _mlp()
    x = torch.randn(2, 6, generator=_gen(9), dtype=D64)
    exact = iso_penalty(net, x, 0.5, scale=1.0)
    many = iso_penalty(net, x, 0.5, scale=1.0, estimator="randomized", num_probes=400, generator=_gen(1))
    torch.testing.assert_close(many, exact, rtol=0.1, atol=0)
    a = iso_penalty(net, x, 0.5, estimator="randomized", generator=_gen(2))
    b = iso_penalty(net, x, 0.5, estimator="randomized", generator=_gen(2))
    assert torch.equal(a, b)


def test_randomized_has_zero_mean_on_isometry():
    """At an exact partial isometry the squared estimators have mean 0 (individual draws may not be 0)."""
    C, n, K = 3, 6, 2.0
    model = IsometricAt(n, C, K, seed=3)
    x = model.x0[None]
    for deviation in ("frobenius", "gaussian"):
        draws = _draws(model, x, 2000, eps=1.0, scale=K, squared=True, deviation=deviation,
                       generator=_gen(4))
        assert float(draws.abs().max()) > 1e-3  # single draws are not zero ...
        assert abs(float(draws.mean())) <= 5 * float(draws.std()) / math.sqrt(2000)  # ... their mean is


# -------------------------------------------- the stereographic coordinates of Shi-Garrier et al.
def test_relation_to_seed_stereographic_form():
    net = _mlp(C=4)
    x = torch.randn(5, 6, generator=_gen(10), dtype=D64)
    eps = 0.5
    alpha = iso_penalty(net, x, eps)
    last = torch.softmax(net(x), -1)[:, -1]
    torch.testing.assert_close(iso_penalty_stereographic(net, x, eps), alpha / (1 - last.sqrt()) ** 2)


def test_seed_printed_eq13_does_not_vanish_on_an_isometry():
    C, n, eps = 4, 7, 0.5
    K = delta_m(C) / eps
    model = IsometricAt(n, C, K, seed=11)
    x = model.x0[None]
    assert float(iso_penalty(model, x, eps)) <= 1e-8
    assert float(iso_penalty_stereographic(model, x, eps)) <= 1e-8  # corrected eq. 13
    assert float(iso_penalty_stereographic(model, x, eps, printed_eq13=True)) > 1e-2  # as printed


# ----------------------------------------------------------------- schedule and loss
def test_iso_schedule():
    assert iso_schedule(0, 30, 0.002, 0.006) == pytest.approx(0.002)
    assert iso_schedule(29, 30, 0.002, 0.006) == pytest.approx(0.006)
    mid = iso_schedule(1, 3, 0.002, 0.008)
    assert mid == pytest.approx(0.004)  # geometric mean
    lams = [iso_schedule(e, 10) for e in range(10)]
    ratios = [b / a for a, b in zip(lams, lams[1:])]
    assert max(ratios) - min(ratios) < 1e-12
    assert iso_schedule(0, 1) == pytest.approx(0.002)
    for bad in [dict(epoch=30, num_epochs=30), dict(epoch=-1, num_epochs=3), dict(epoch=0, num_epochs=0),
                dict(epoch=0, num_epochs=3, lam_min=0.0), dict(epoch=0, num_epochs=3, lam_min=0.5, lam_max=0.1)]:
        with pytest.raises(ValueError):
            iso_schedule(**bad)


@pytest.mark.parametrize("kw", [dict(estimator="exact"),
                                dict(estimator="randomized", num_probes=2, squared=True),
                                dict(estimator="randomized", num_probes=1, deviation="gaussian", squared=True)])
def test_iso_loss_short_training_run(kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x = torch.rand(8, 1, 6, 6, generator=_gen(1))
    y = torch.randint(0, 3, (8,), generator=_gen(2))
    loss_fn = ISOLoss(eps=1.0, num_epochs=3, generator=_gen(3), **kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.parameters()]
    for epoch in range(3):
        loss_fn.set_epoch(epoch)
        opt.zero_grad()
        loss = loss_fn(model, x, y)
        assert torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        opt.step()
    assert loss_fn.lam == pytest.approx(0.006)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_iso_loss_value():
    net = _mlp()
    x = torch.randn(4, 6, generator=_gen(11), dtype=D64)
    y = torch.tensor([0, 1, 2, 3])
    fn = ISOLoss(eps=0.5, lam=0.3, reduction="none")
    ce = nn.functional.cross_entropy(net(x), y, reduction="none")
    torch.testing.assert_close(fn(net, x, y), 0.7 * ce + 0.3 * iso_penalty(net, x, 0.5))
    fn_sum = ISOLoss(eps=0.5, lam=0.3, reduction="sum")
    torch.testing.assert_close(fn_sum(net, x, y), fn(net, x, y).sum())


def test_bad_inputs_raise():
    net = _mlp()
    x = torch.randn(2, 6, dtype=D64)
    with pytest.raises(ValueError, match="eps"):
        iso_penalty(net, x, 0.0)
    with pytest.raises(ValueError, match="scale"):
        iso_penalty(net, x, 1.0, scale=-1.0)
    with pytest.raises(ValueError, match="estimator"):
        iso_penalty(net, x, 1.0, estimator="hutchinson")
    with pytest.raises(ValueError, match="num_probes"):
        iso_penalty(net, x, 1.0, estimator="randomized", num_probes=1)
    with pytest.raises(ValueError, match="gaussian"):
        iso_penalty(net, x, 1.0, estimator="randomized", deviation="gaussian", probe="rademacher")
    with pytest.raises(ValueError, match="deviation"):
        iso_penalty(net, x, 1.0, deviation="spectral")
    with pytest.raises(ValueError, match="non-finite"):
        iso_penalty(net, x * float("nan"), 1.0)
    with pytest.raises(ValueError, match="reduction"):
        ISOLoss(1.0, reduction="avg")
