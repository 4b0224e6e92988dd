"""Spectrum of the pulled-back Fisher metric (Shi-Garrier et al. 2024, §2.3, §3.2) against brute force in float64."""
import pytest
import torch
from torch import nn

from liplayers.functional.geometry import fisher_rao_distance
from liplayers.regularizers.fisher_spectrum import (
    FisherEigenvalueLoss,
    data_rank,
    fisher_eigendecomposition,
    fisher_max_eigenvalue,
    fisher_spectrum,
)


def make_model(n, C, seed=0, width=12):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n, width), nn.Tanh(), nn.Linear(width, C)).double()


def brute_force_pullback(model, x):
    """J_θᵀ G_θ J_θ with θ = (p_1..p_m) and the Fisher metric of Shi-Garrier et al. (2024) eq. 2, per sample."""
    out = []
    for xi in x:
        def theta(z):
            return torch.softmax(model(z[None])[0], -1)[:-1]

        J = torch.autograd.functional.jacobian(theta, xi)  # (m, n)
        p = torch.softmax(model(xi[None])[0], -1).detach()
        G = torch.diag(1 / p[:-1]) + 1 / p[-1]  # δ_ij/θ_i + 1/θ_{m+1}
        out.append(J.T @ G @ J)
    return torch.stack(out)


@pytest.mark.parametrize("n,C", [(6, 4), (10, 3), (3, 5)])
def test_spectrum_matches_chart_computation_and_rank_bound(n, C):
    model = make_model(n, C)
    x = torch.randn(5, n, dtype=torch.float64)
    G = brute_force_pullback(model, x)  # (B, n, n) in the θ chart
    ev_bf = torch.linalg.eigvalsh(G).flip(-1)  # descending, n of them
    ev = fisher_spectrum(model, x)
    r = min(n, C)
    assert ev.shape == (5, r)
    scale = ev_bf[:, :1]
    assert torch.allclose(ev, ev_bf[:, :r].clamp_min(0), atol=1e-10 * float(scale.max()) + 1e-14)
    if n >= C:  # rank ≤ C − 1: the C-th eigenvalue vanishes
        assert float(ev_bf[:, C - 1:].abs().max()) <= 1e-10 * float(scale.max())
    expected_rank = min(n, C - 1)
    assert torch.equal(data_rank(model, x), torch.full((5,), expected_rank))
    # the same via the n×n matrix J_μᵀJ_μ (μ = 2√p), independent of the small-side trick
    for b in range(2):
        Jmu = torch.autograd.functional.jacobian(lambda z: 2 * torch.softmax(model(z[None])[0], -1).sqrt(), x[b])
        ev_n = torch.linalg.eigvalsh(Jmu.T @ Jmu).flip(-1)
        assert torch.allclose(ev[b], ev_n[:r].clamp_min(0), atol=1e-12)


def test_data_subspace_is_span_of_probability_gradients():
    n, C = 8, 4
    model = make_model(n, C, seed=1)
    x = torch.randn(3, n, dtype=torch.float64)
    ev, V = fisher_eigendecomposition(model, x)
    k = C - 1
    for b in range(3):
        grads = torch.autograd.functional.jacobian(lambda z: torch.softmax(model(z[None])[0], -1), x[b])  # (C, n)
        basis = V[b][:, :k]  # orthonormal basis of D_x (Shi-Garrier et al. 2024 eq. 4)
        assert torch.allclose(basis.T @ basis, torch.eye(k, dtype=torch.float64), atol=1e-10)
        resid = grads.T - basis @ (basis.T @ grads.T)
        assert float(resid.abs().max()) < 1e-10 * float(grads.abs().max())
        # and every gradient direction is needed: the gradients have rank C − 1
        assert int(torch.linalg.matrix_rank(grads)) == k


def test_largest_eigenvalue_is_the_fisher_rao_speed():
    """d_FR(F(x), F(x + εv)) ≈ ε √λ_max along the top eigenvector, and no random direction is faster."""
    n, C = 5, 3
    model = make_model(n, C, seed=2)
    x = torch.randn(2, n, dtype=torch.float64)
    ev, V = fisher_eigendecomposition(model, x)
    eps = 1e-5
    with torch.no_grad():
        for b in range(2):
            v = V[b][:, 0]
            d = fisher_rao_distance(model(x[b:b + 1]), model(x[b:b + 1] + eps * v))
            assert float(d) / eps == pytest.approx(float(ev[b, 0].sqrt()), rel=1e-4)
            dirs = torch.randn(200, n, dtype=torch.float64)
            dirs = dirs / dirs.norm(dim=1, keepdim=True)
            dr = fisher_rao_distance(model(x[b:b + 1]).expand(200, -1), model(x[b:b + 1] + eps * dirs))
            assert float(dr.max()) / eps <= float(ev[b, 0].sqrt()) * (1 + 1e-4)


def test_power_estimator_and_gradient():
    n, C = 7, 5
    model = make_model(n, C, seed=3)
    x = torch.randn(4, n, dtype=torch.float64)
    exact = fisher_max_eigenvalue(model, x)
    power = fisher_max_eigenvalue(model, x, "power", n_power_iterations=60, generator=torch.Generator().manual_seed(0))
    assert bool((power <= exact * (1 + 1e-9)).all())  # a Rayleigh quotient: a lower bound
    assert torch.allclose(power, exact, rtol=1e-4)
    # the exact penalty's parameter gradient matches a finite difference
    w = model[2].weight
    direction = torch.randn_like(w)
    (g,) = torch.autograd.grad(fisher_max_eigenvalue(model, x).sum(), w)
    h = 1e-6
    with torch.no_grad():
        w += h * direction
        up = fisher_max_eigenvalue(model, x).sum()
        w -= 2 * h * direction
        down = fisher_max_eigenvalue(model, x).sum()
        w += h * direction
    assert float((g * direction).sum()) == pytest.approx(float((up - down) / (2 * h)), rel=1e-5)


def test_loss_suppresses_the_largest_eigenvalue():
    n, C = 6, 3
    model = make_model(n, C, seed=4)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, n, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    before = float(fisher_max_eigenvalue(model, x).detach().mean())
    loss_fn = FisherEigenvalueLoss(lam=10.0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        loss = loss_fn(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(fisher_max_eigenvalue(model, x).detach().mean()) < 0.5 * before
    # the logged batch means are the two terms the loss combines: CE + lam·λ_max
    torch.testing.assert_close(loss.detach(), loss_fn.last_ce + 10.0 * loss_fn.last_eig)


def test_saturated_prediction_has_rank_zero_and_errors():
    model = nn.Sequential(nn.Linear(3, 3)).double()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([0.0, 800.0, 0.0]))
    x = torch.randn(2, 3, dtype=torch.float64)
    assert torch.equal(data_rank(model, x), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="estimator"):
        fisher_max_eigenvalue(model, x, estimator="lanczos")
    with pytest.raises(ValueError, match="lam"):
        FisherEigenvalueLoss(lam=-1.0)
    with pytest.raises(ValueError, match="x must be"):
        fisher_spectrum(model, torch.randn(3))
