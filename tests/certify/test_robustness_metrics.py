"""Mean certifiable robustness (Béthune et al. 2022): signed radii vs geometry and attacks."""
import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.certify.robustness import mean_certifiable_robustness, signed_certified_radius
from liplayers import LInfLinear
from liplayers.lipschitz import linf_lipschitz_bound_of


def test_binary_is_mean_of_y_times_f():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(100, generator=g, dtype=torch.float64)
    y01 = (torch.rand(100, generator=g) > 0.4).long()
    ypm = 2 * y01 - 1
    expected = (ypm.double() * f).mean()
    assert torch.allclose(mean_certifiable_robustness(f, y01), expected)
    assert torch.allclose(mean_certifiable_robustness(f[:, None], ypm), expected)
    assert torch.allclose(mean_certifiable_robustness(f, y01, lipschitz=2.0), expected / 2)
    assert torch.allclose(mean_certifiable_robustness(f, y01, lipschitz=None), expected)


def test_binary_linear_signed_radius_is_signed_distance_to_the_boundary():
    """For f = wᵀx + b with ‖w‖₂ = 1 the signed radius is exactly the signed distance to {f = 0}."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(5, generator=g, dtype=torch.float64)
    w = w / w.norm()
    b = 0.3
    x = torch.randn(200, 5, generator=g, dtype=torch.float64)
    y = (torch.rand(200, generator=g) > 0.5).long()
    f = x @ w + b
    foot = x - f[:, None] * w  # orthogonal projection onto the hyperplane
    assert torch.allclose(foot @ w + b, torch.zeros(200, dtype=torch.float64), atol=1e-12)
    dist = (x - foot).norm(dim=1)
    correct = (f > 0) == (y > 0)
    signed = torch.where(correct, dist, -dist)
    assert torch.allclose(signed_certified_radius(f, y), signed, atol=1e-12)
    assert torch.allclose(mean_certifiable_robustness(f, y), signed.mean(), atol=1e-12)


def test_multiclass_definition_and_linear_bound():
    g = torch.Generator().manual_seed(2)
    W = torch.randn(4, 3, generator=g, dtype=torch.float64)
    x = torch.randn(300, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (300,), generator=g)
    logits = x @ W.T
    Lw = float(torch.linalg.matrix_norm(W, 2))
    s = signed_certified_radius(logits, y, lipschitz=None)
    f_y = logits.gather(1, y[:, None])[:, 0]
    others = logits.clone()
    others[torch.arange(300), y] = -math.inf
    assert torch.allclose(s, f_y - others.amax(1))
    assert bool(((s > 0) == (logits.argmax(1) == y)).all())
    r = signed_certified_radius(logits, y, lipschitz=Lw)
    assert torch.allclose(r, s / (math.sqrt(2) * Lw))
    # geometry of a linear model (distances to the half-spaces (w_y − w_j)ᵀz ≥ 0 that bound
    # the region of class y):
    diff = f_y[:, None] - logits  # f_y − f_j
    wdiff = (W[y][:, None, :] - W[None, :, :]).norm(dim=-1)
    ratio = (diff / wdiff).masked_fill(torch.nn.functional.one_hot(y, 4).bool(), math.nan)
    correct = s > 0
    # correct: the exact distance to the region's boundary is min_j (f_y − f_j)/‖w_y − w_j‖
    exact_out = torch.where(torch.isnan(ratio), math.inf, ratio).amin(1)
    # wrong: the distance to the region of y is at least max_j (f_j − f_y)/‖w_y − w_j‖
    lower_in = torch.where(torch.isnan(ratio), -math.inf, -ratio).amax(1)
    assert bool((r[correct] <= exact_out[correct] * (1 + 1e-12)).all())  # never exceeds the truth
    assert bool((-r[~correct] <= lower_in[~correct] * (1 + 1e-12)).all())
    assert int(correct.sum()) > 20 and int((~correct).sum()) > 20
    assert torch.allclose(mean_certifiable_robustness(logits, y, lipschitz=Lw), r.mean())
    assert torch.allclose(signed_certified_radius(logits, y, lipschitz=1.0, norm="linf"), s / 2)


def _train(net, d, steps, g):
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(steps):
        x = torch.rand(128, d, generator=g, dtype=torch.float64)
        y = (x.sum(1) * 1.5).long().clamp(max=2)
        loss = nn.functional.multi_margin_loss(net(x), y, margin=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_decision_cannot_change_within_signed_radius_pgd(norm):
    """Correct samples stay correct and wrong samples stay wrong within |signed radius| (PGD both ways)."""
    from liplayers.analysis import attacks
    g = torch.Generator().manual_seed(3)
    torch.manual_seed(3)
    if norm == "l2":
        net = L.Sequential(L.BjorckLinear(2, 16), L.GroupSort(2), L.BjorckLinear(16, 3)).double()
    else:
        net = nn.Sequential(LInfLinear(2, 16), L.MaxMin(), LInfLinear(16, 3)).double()
    _train(net, 2, 60, g)
    K = net.lipschitz_bound() if norm == "l2" else linf_lipschitz_bound_of(net)
    x = torch.rand(200, 2, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (200,), generator=g)  # noisy labels: plenty of misclassified points
    with torch.no_grad():
        r = signed_certified_radius(net(x), y, lipschitz=K, norm=norm)
    assert int((r > 1e-3).sum()) > 10 and int((r < -1e-3).sum()) > 10
    eps = r.abs() * 0.999
    # maximize −s for correct points (make them wrong), +s for wrong points (make them right)
    sign = torch.where(r > 0, -1.0, 1.0).to(torch.float64)

    def objective(logits):
        f_y = logits.gather(1, y[:, None])[:, 0]
        other = logits.scatter(1, y[:, None], -math.inf).amax(1)
        return sign * (f_y - other)

    adv = attacks.pgd(net, x, objective, eps, norm=norm, steps=40, domain=None,
                      generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        r_adv = signed_certified_radius(net(adv), y, lipschitz=None)
    assert bool((torch.sign(r_adv) == torch.sign(r)).all())


def test_bad_input():
    with pytest.raises(ValueError, match="lipschitz"):
        mean_certifiable_robustness(torch.randn(3), torch.ones(3), lipschitz=0.0)
    with pytest.raises(ValueError, match="norm"):
        signed_certified_radius(torch.randn(3, 2), torch.zeros(3, dtype=torch.long), norm="l1")
    with pytest.raises(ValueError, match="labels"):
        signed_certified_radius(torch.randn(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels must lie"):
        signed_certified_radius(torch.randn(3, 2), torch.full((3,), 2))
