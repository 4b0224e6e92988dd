"""Randomized smoothing on a 2-D linear classifier, where the smoothed probability is a normal CDF."""
import math

import pytest
import torch
from torch import nn

from liplayers.certify import ABSTAIN, SmoothedClassifier, clopper_pearson_lower

stats = pytest.importorskip("scipy.stats")


W = torch.tensor([0.6, 0.8], dtype=torch.float64)  # unit normal of the boundary
B = -0.3


def linear_base() -> nn.Module:
    """Logits (0, wᵀx + b): class 1 iff wᵀx + b > 0."""
    lin = nn.Linear(2, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.stack([torch.zeros(2, dtype=torch.float64), W]))
        lin.bias.copy_(torch.tensor([0.0, B], dtype=torch.float64))
    return lin


def points_at(distances):
    """Points at signed distances from the boundary (along its normal, from a point on it)."""
    on = -B * W  # wᵀ(on) + b = 0
    d = torch.tensor(distances, dtype=torch.float64)
    return on[None, :] + d[:, None] * W[None, :]


def test_certified_radius_below_and_close_to_the_true_one():
    sigma = 0.5
    smooth = SmoothedClassifier(linear_base(), sigma)
    dists = [-1.5, -0.8, -0.3, -0.05, 0.05, 0.3, 0.8, 1.5]
    x = points_at(dists)
    # true smoothed classifier: p_A = Φ(|d|/σ), so the exact certified radius σΦ⁻¹(p_A) = |d|
    g = torch.Generator().manual_seed(0)
    pred, radius = smooth.certify(x, n0=100, n=100_000, alpha=0.001, batch_size=20_000, generator=g)
    true_class = torch.tensor([int(d > 0) for d in dists])
    true_radius = torch.tensor([abs(d) for d in dists], dtype=torch.float64)
    assert torch.equal(pred, true_class)
    assert bool((radius <= true_radius).all())
    assert bool((true_radius - radius <= 0.06).all()), (radius, true_radius)
    # larger n: closer
    g = torch.Generator().manual_seed(1)
    _, r_small = smooth.certify(x, n0=100, n=2_000, alpha=0.001, batch_size=20_000, generator=g)
    assert float((true_radius - radius).mean()) < float((true_radius - r_small.clamp_min(0)).mean())


def test_coverage_of_the_clopper_pearson_bound():
    # 400 independent certifications of the same point: the radius exceeds the true one
    # with probability <= alpha (Clopper-Pearson is conservative)
    sigma, d, alpha = 1.0, 0.4, 0.1
    smooth = SmoothedClassifier(linear_base(), sigma)
    x = points_at([d]).repeat(400, 1)
    g = torch.Generator().manual_seed(2)
    pred, radius = smooth.certify(x, n0=20, n=100, alpha=alpha, batch_size=40_000, generator=g)
    wrong = (radius > d) & (pred != ABSTAIN)
    assert float(wrong.double().mean()) <= alpha
    assert float(radius.mean()) < d


def test_predict_abstains_on_the_boundary_and_answers_far_away():
    smooth = SmoothedClassifier(linear_base(), 0.5)
    x = points_at([0.0, -1.0, 1.0])
    g = torch.Generator().manual_seed(3)
    pred = smooth.predict(x, n=1000, alpha=0.01, batch_size=3000, generator=g)
    assert pred.tolist() == [ABSTAIN, 0, 1]
    # reproducible given the generator
    p1 = smooth.predict(x, n=200, alpha=0.01, generator=torch.Generator().manual_seed(5))
    p2 = smooth.predict(x, n=200, alpha=0.01, generator=torch.Generator().manual_seed(5))
    assert torch.equal(p1, p2)
    c1 = smooth.sample_counts(x, 500, batch_size=7, generator=torch.Generator().manual_seed(5))
    assert bool((c1.sum(1) == 500).all())  # batches straddling two inputs are counted right
    assert c1[1, 0] > 450 and c1[2, 1] > 450


def test_certify_abstains_when_the_top_class_is_not_a_majority():
    smooth = SmoothedClassifier(linear_base(), 1.0)
    pred, radius = smooth.certify(points_at([0.0]), n0=50, n=500, alpha=0.001,
                                  generator=torch.Generator().manual_seed(0))
    assert pred.item() == ABSTAIN and radius.item() == 0.0


def test_clopper_pearson_matches_scipy_exact_interval():
    n, alpha = 200, 0.05
    k = torch.tensor([0, 1, 17, 100, 199, 200])
    lo = clopper_pearson_lower(k, n, alpha)
    for ki, li in zip(k.tolist(), lo.tolist()):
        ref = stats.binomtest(ki, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact").low
        assert li == pytest.approx(ref, abs=1e-12)
    assert lo[0] == 0.0 and lo[-1] == pytest.approx(alpha ** (1 / n))


def test_single_logit_base_and_bad_arguments():
    lin = nn.Linear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(W[None])
        lin.bias.fill_(B)
    smooth = SmoothedClassifier(lin, 0.5)
    pred, radius = smooth.certify(points_at([1.0]), n0=50, n=5000, alpha=0.001,
                                  generator=torch.Generator().manual_seed(0))
    assert pred.item() == 1 and 0.8 < radius.item() <= 1.0
    with pytest.raises(ValueError, match="sigma"):
        SmoothedClassifier(lin, 0.0)
    with pytest.raises(ValueError, match="alpha"):
        smooth.certify(points_at([1.0]), alpha=1.5)
    with pytest.raises(ValueError, match="n0"):
        smooth.certify(points_at([1.0]), n0=0)
    with pytest.raises(ValueError, match="non-finite"):
        smooth.predict(torch.tensor([[float("nan"), 0.0]], dtype=torch.float64))
