"""x ↦ σΦ⁻¹(p_A(x)) is 1-Lipschitz for Gaussian smoothing (Salman et al. 2019).

Checked on base classifiers whose smoothed probability is closed-form (a half-space and a
slab), and the closed form itself is checked against the library's Monte-Carlo smoothing.
"""
import math

import pytest
import torch
from torch import nn

from liplayers.certify.robustness import smoothed_lipschitz_bound

stats = pytest.importorskip("scipy.stats")


class HalfSpace(nn.Module):
    """h(x) = 1[wᵀx + b > 0] as one binary logit (the logit is the signed value)."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        return x @ self.w + self.b


def halfspace_probability(x, w, b, sigma):
    """p_1(x) = P(wᵀ(x + σZ) + b > 0) = Φ((wᵀx + b)/(σ‖w‖))."""
    return stats.norm.cdf(((x @ w + b) / (sigma * w.norm())).numpy())


def slab_probability(t, a, sigma):
    """h(x) = 1[|x₁| < a]: p(x) = Φ((a − x₁)/σ) − Φ((−a − x₁)/σ)."""
    return stats.norm.cdf((a - t) / sigma) - stats.norm.cdf((-a - t) / sigma)


def test_bound_values():
    assert smoothed_lipschitz_bound(0.25) == 1.0
    assert smoothed_lipschitz_bound(0.5, "probability") == pytest.approx(1 / (0.5 * math.sqrt(2 * math.pi)))
    with pytest.raises(ValueError, match="sigma"):
        smoothed_lipschitz_bound(0.0)
    with pytest.raises(ValueError, match="scale"):
        smoothed_lipschitz_bound(1.0, "logit")


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_halfspace_probit_is_one_lipschitz_and_tight(sigma):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, generator=g, dtype=torch.float64) * 3
    b = 0.4
    x = torch.randn(400, 6, generator=g, dtype=torch.float64) * 0.5
    z = x + torch.randn(400, 6, generator=g, dtype=torch.float64) * 0.3
    gx = sigma * stats.norm.ppf(halfspace_probability(x, w, b, sigma))
    gz = sigma * stats.norm.ppf(halfspace_probability(z, w, b, sigma))
    ratio = abs(gx - gz) / (x - z).norm(dim=1).numpy()
    K = smoothed_lipschitz_bound(sigma)
    assert ratio.max() <= K * (1 + 1e-9)
    # tight: along w the ratio is exactly 1 (g = (wᵀx + b)/‖w‖)
    u = w / w.norm()
    p0 = halfspace_probability(x[:1], w, b, sigma)
    p1 = halfspace_probability(x[:1] + 0.1 * u, w, b, sigma)
    tight = abs(sigma * (stats.norm.ppf(p1) - stats.norm.ppf(p0))) / 0.1
    assert tight[0] == pytest.approx(1.0, rel=1e-8)
    # the probability itself: slope φ(0)/σ at the boundary = the probability-scale bound
    xb = (-b / w.norm() ** 2) * w  # on the boundary
    h = 1e-6
    slope = (halfspace_probability((xb + h * u)[None], w, b, sigma) - halfspace_probability((xb - h * u)[None], w, b, sigma)) / (2 * h)
    assert slope[0] == pytest.approx(smoothed_lipschitz_bound(sigma, "probability"), rel=1e-6)


@pytest.mark.parametrize("sigma,a", [(0.5, 0.3), (1.0, 1.0), (0.3, 2.0)])
def test_slab_probit_is_one_lipschitz(sigma, a):
    """A non-linear σΦ⁻¹(p): the slope on a fine grid never exceeds 1 (nor p's slope 1/(σ√2π))."""
    t = torch.linspace(-3.0, 3.0, 6001, dtype=torch.float64).numpy()
    p = slab_probability(t, a, sigma)
    gval = sigma * stats.norm.ppf(p)
    dt = t[1] - t[0]
    slope_g = abs(gval[1:] - gval[:-1]) / dt
    slope_p = abs(p[1:] - p[:-1]) / dt
    assert slope_g.max() <= smoothed_lipschitz_bound(sigma) * (1 + 1e-6)
    assert slope_p.max() <= smoothed_lipschitz_bound(sigma, "probability") * (1 + 1e-6)
    assert slope_g.max() > 0.3  # not vacuous: g really varies


def test_closed_form_matches_monte_carlo_smoothing():
    """The half-space closed form used above agrees with SmoothedClassifier's sampling."""
    from liplayers.certify import smoothing
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    b, sigma = 0.2, 0.5
    x = torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.4
    clf = smoothing.SmoothedClassifier(HalfSpace(w, b), sigma)
    assert clf.lipschitz_bound() == 1.0
    n = 20000
    counts = clf.sample_counts(x, n, batch_size=20000, generator=torch.Generator().manual_seed(2))
    p_mc = counts[:, 1].double() / n
    p_exact = torch.as_tensor(halfspace_probability(x, w, b, sigma))
    se = (p_exact * (1 - p_exact) / n).sqrt()
    assert bool(((p_mc - p_exact).abs() <= 5 * se + 1e-12).all())
