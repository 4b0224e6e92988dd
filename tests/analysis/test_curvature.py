"""Curvature of decision boundaries (liplayers.analysis.curvature) against closed forms."""
import math

import pytest
import torch
from torch import nn

from liplayers import BjorckLinear, MaxMin, Sequential
from liplayers.analysis.curvature import (average_curvature, boundary_point, curvature_score, decision_gradient,
                                 estimate_original_label, hessian_vector_product, logit_hessians,
                                 principal_curvatures)


class Quadric(nn.Module):
    """Logits ``(xᵀAx − c, 0)``: the level sets of F = f_0 − f_1 are quadrics."""

    def __init__(self, diag, c=1.0):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(diag, dtype=torch.float64))
        self.c = c

    def forward(self, x):
        F = (self.a * x * x).sum(1) - self.c
        return torch.stack([F, torch.zeros_like(F)], 1)


def _points_at_radius(radii, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(radii), d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True) * torch.tensor(radii, dtype=torch.float64)[:, None]


@pytest.mark.parametrize("h", [None, 0.1])
def test_sphere_principal_curvatures_are_one_over_radius(h):
    d = 7
    x = _points_at_radius([1.0, 2.0, 0.5], d)
    model = Quadric(torch.ones(d))  # boundary: the unit sphere; level set through x: radius ‖x‖
    k = principal_curvatures(model, x, label=0, other=1, h=h)
    assert k.shape == (3, d - 1)
    expected = (1 / x.norm(dim=1))[:, None].expand_as(k)
    torch.testing.assert_close(k, expected, rtol=1e-9, atol=1e-9)
    # orientation: with the classes swapped the boundary bends the other way
    torch.testing.assert_close(principal_curvatures(model, x, label=1, other=0, h=h), -expected,
                               rtol=1e-9, atol=1e-9)
    kb = average_curvature(model, x, label=0, h=h)
    assert torch.isnan(kb[:, 0]).all()
    torch.testing.assert_close(kb[:, 1], 1 / x.norm(dim=1), rtol=1e-9, atol=1e-9)


def test_ellipsoid_on_an_axis_has_curvatures_a_k_over_sqrt_a1():
    a = torch.tensor([2.0, 0.5, 1.0, 3.0, 5.0], dtype=torch.float64)
    model = Quadric(a)
    x = torch.zeros(1, 5, dtype=torch.float64)
    x[0, 0] = 1 / math.sqrt(a[0])  # on the boundary xᵀAx = 1, normal along e₁
    k = principal_curvatures(model, x, label=0, other=1)
    expected = torch.sort(a[1:] / math.sqrt(a[0])).values
    torch.testing.assert_close(k[0], expected, rtol=1e-10, atol=1e-12)
    kb = average_curvature(model, x, label=0)[0, 1]
    assert abs(float(kb) - float(expected.mean())) < 1e-10


def _smooth_mlp(d=5, C=4, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 16), nn.Softplus(), nn.Linear(16, C)).double()


def test_against_independent_full_hessian_and_projection():
    """Eq. 6 as written: nonzero eigenvalues of P H P / ‖∇F‖ with torch.autograd.functional.hessian."""
    d = 5
    model = _smooth_mlp(d)
    x = torch.randn(3, d, dtype=torch.float64)
    k = principal_curvatures(model, x, label=0, other=2)
    for b in range(3):
        F = lambda z: (lambda o: o[0, 0] - o[0, 2])(model(z[None]))  # noqa: E731
        H = torch.autograd.functional.hessian(F, x[b])
        g = torch.autograd.functional.jacobian(F, x[b])
        n = g / g.norm()
        P = torch.eye(d, dtype=torch.float64) - torch.outer(n, n)
        ev = torch.linalg.eigvalsh(P @ H @ P) / g.norm()
        # drop the eigenvalue of the normal direction (P n = 0): the one closest to 0 in n's span
        v = torch.linalg.eigh(P @ H @ P).eigenvectors
        normal_idx = int(torch.argmax((v.T @ n).abs()))
        ev = torch.cat([ev[:normal_idx], ev[normal_idx + 1:]])
        torch.testing.assert_close(k[b], torch.sort(ev).values, rtol=1e-8, atol=1e-10)
        hv = hessian_vector_product(model, x[b:b + 1], g[None], label=0, other=2)
        torch.testing.assert_close(hv[0], H @ g, rtol=1e-8, atol=1e-12)


def test_logit_hessians_exact_and_finite_difference_agree_on_smooth_model():
    model = _smooth_mlp()
    x = torch.randn(2, 5, dtype=torch.float64)
    _, J, H = logit_hessians(model, x)
    _, J2, H2 = logit_hessians(model, x, h=1e-4)
    torch.testing.assert_close(J, J2)
    torch.testing.assert_close(H, H2, rtol=1e-5, atol=1e-6)


def test_average_curvature_is_the_mean_of_principal_curvatures_and_goldman_relation():
    d = 5
    model = _smooth_mlp(d)
    x = torch.randn(4, d, dtype=torch.float64)
    pred = model(x).argmax(1)
    kb = average_curvature(model, x)
    for j in range(4):
        mask = pred != j
        k = principal_curvatures(model, x[mask], other=j)
        torch.testing.assert_close(kb[mask, j], k.mean(1), rtol=1e-9, atol=1e-12)
    # Goldman's 3-D mean-curvature formula equals −(d−1)/2 · κ̄ in d dimensions
    _, J, H = logit_hessians(model, x)
    ar = torch.arange(4)
    j = (pred + 1) % 4
    g, HF = J[ar, pred] - J[ar, j], H[ar, pred] - H[ar, j]
    gn = g.norm(dim=1)
    eq7 = (torch.einsum("bd,bde,be->b", g, HF, g) - HF.diagonal(dim1=1, dim2=2).sum(1) * gn ** 2) / (2 * gn ** 3)
    torch.testing.assert_close(eq7, -(d - 1) / 2 * kb[ar, j], rtol=1e-9, atol=1e-12)
    # detector score and relabelling
    torch.testing.assert_close(curvature_score(model, x), torch.nan_to_num(kb, nan=0.0).sum(1))
    est = estimate_original_label(model, x)
    assert est.shape == (4,) and bool((est != pred).all())


def test_hutchinson_estimate_is_close_to_exact():
    d = 6
    model = Quadric(torch.linspace(0.5, 2.0, d))
    x = _points_at_radius([1.0, 1.5], d, seed=3)
    exact = average_curvature(model, x, label=0)[:, 1]
    est = average_curvature(model, x, label=0, num_probes=4000, generator=torch.Generator().manual_seed(0))[:, 1]
    torch.testing.assert_close(est, exact, rtol=0.03, atol=0.0)


def test_piecewise_linear_networks_have_zero_exact_curvature():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert torch.all(principal_curvatures(lin, x) == 0)
    gnp = Sequential(BjorckLinear(4, 8), MaxMin(), BjorckLinear(8, 3)).double().eval()
    k = principal_curvatures(gnp, x)
    assert torch.all(k.abs() < 1e-12)
    # at a finite scale the kinks of MaxMin show up (finite, not all zero for some inputs)
    kh = principal_curvatures(gnp, torch.randn(32, 4, dtype=torch.float64), h=0.5)
    assert torch.isfinite(kh).all() and bool((kh.abs() > 1e-6).any())


def test_boundary_point_lands_on_the_boundary():
    d = 4
    model = Quadric(torch.ones(d))  # class 0 outside the unit sphere
    x = _points_at_radius([2.0, 1.5, 3.0], d)
    z, found = boundary_point(model, x, 0.1 * x, label=0, other=1)
    assert found.all()
    torch.testing.assert_close(z.norm(dim=1), torch.ones(3, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    z2, found2 = boundary_point(model, x, 1.5 * x, label=0, other=1)  # no sign change outward
    assert not found2.any() and torch.equal(z2, x)


def test_decision_gradient_defaults_to_prediction_and_runner_up():
    model = _smooth_mlp()
    x = torch.randn(3, 5, dtype=torch.float64)
    out = model(x)
    F, g = decision_gradient(model, x)
    top2 = out.topk(2, dim=1).values
    torch.testing.assert_close(F, top2[:, 0] - top2[:, 1])
    assert g.shape == (3, 5)


def test_bad_inputs_raise_clear_errors():
    model = _smooth_mlp()
    x = torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="h must be"):
        principal_curvatures(model, x, h=-1.0)
    with pytest.raises(ValueError, match="must differ"):
        principal_curvatures(model, x, label=1, other=1)
    with pytest.raises(ValueError, match="batch dimension"):
        principal_curvatures(model, x[0])
    with pytest.raises(ValueError, match="class indices"):
        average_curvature(model, x, label=7)
    with pytest.raises(ValueError, match="non-finite"):
        principal_curvatures(model, torch.full((1, 5), float("nan"), dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 2 logits"):
        principal_curvatures(nn.Linear(5, 1).double(), x)
    with pytest.raises(ValueError, match="num_probes"):
        average_curvature(model, x, num_probes=0)
