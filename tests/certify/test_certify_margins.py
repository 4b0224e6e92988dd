"""Margin certificates (liplayers.certify.margins / certify) against closed-form distances."""
import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.certify import (
    certified_accuracy,
    certified_radius,
    certified_radius_last_layer,
    certify,
    lipschitz_bound,
    split_last_linear,
)


def exact_distance(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor):
    """Exact L2 distance from x to the boundary of its argmax region for f = Wx + b (float64)."""
    w, b, x = w.double(), b.double(), x.double()
    f = x @ w.T + b
    y = f.argmax(1)
    diff = w[y][:, None, :] - w[None, :, :]  # (B, C, d): w_y − w_j
    num = f.gather(1, y[:, None]) - f
    den = diff.norm(dim=2)
    ratio = torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, math.inf))
    ratio.scatter_(1, y[:, None], math.inf)
    return ratio.min(1).values, y


def orthonormal_rows(c, d, dtype=torch.float64):
    q, _ = torch.linalg.qr(torch.randn(d, c, dtype=torch.float64))
    return q.T.contiguous().to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_linear_orthonormal_rows_radius_is_exact_distance(dtype):
    C, d = 5, 12
    lin = nn.Linear(d, C, dtype=dtype)
    with torch.no_grad():
        lin.weight.copy_(orthonormal_rows(C, d, dtype))
        lin.bias.copy_(torch.randn(C, dtype=dtype))
    x = torch.randn(400, d, dtype=dtype)
    dist, y = exact_distance(lin.weight.detach(), lin.bias.detach(), x)
    for last_layer in (False, True):
        pred, r = certify(nn.Sequential(lin), x, last_layer=last_layer)
        assert torch.equal(pred, y)
        assert bool((r <= dist).all()), "certified radius exceeds the exact distance to the boundary"
        big = dist > 1e-2
        assert big.sum() > 300
        assert bool((r[big] >= 0.99 * dist[big]).all()), "certified radius is not within 1% of the exact distance"
    # the closed form itself: stepping just past the exact distance toward the nearest boundary flips the class
    w = lin.weight.detach().double()
    f = x.double() @ w.T + lin.bias.detach().double()
    j = (f.gather(1, y[:, None]) - f).scatter(1, y[:, None], math.inf).argmin(1)
    direction = (w[j] - w[y]) / (w[j] - w[y]).norm(dim=1, keepdim=True)
    x_far = x.double() + 1.001 * dist[:, None] * direction
    assert bool(((x_far @ w.T + lin.bias.detach().double()).argmax(1) != y).all())


def test_last_layer_variant_is_exact_for_general_linear_and_never_looser():
    C, d = 6, 10
    lin = nn.Linear(d, C, dtype=torch.float64)
    x = torch.randn(300, d, dtype=torch.float64)
    dist, _ = exact_distance(lin.weight.detach(), lin.bias.detach(), x)
    logits = lin(x).detach()
    r_gen = certified_radius(logits, lipschitz_bound(lin))
    r_last = certified_radius_last_layer(logits, lin.weight.detach(), 1.0)
    assert bool((r_gen <= dist).all()) and bool((r_last <= dist).all())
    assert bool((r_last >= r_gen).all())
    ok = dist > 1e-3
    assert torch.allclose(r_last[ok], dist[ok], rtol=1e-5)
    assert float((r_gen / dist.clamp_min(1e-12))[ok].mean()) < 0.9  # the generic one is visibly looser here


def test_binary_single_logit_and_linf():
    d = 9
    w = torch.randn(1, d, dtype=torch.float64)
    w = w / w.norm()
    lin = nn.Linear(d, 1, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(w)
    x = torch.randn(200, d, dtype=torch.float64)
    f = lin(x).detach()
    pred, r = certify(lin, x)
    assert torch.equal(pred, (f[:, 0] > 0).long())
    exact = f[:, 0].abs()  # distance to the hyperplane, ‖w‖ = 1
    assert bool((r <= exact).all()) and torch.allclose(r, exact, rtol=1e-6)
    # L∞: r₂/√n is below the exact L∞ distance |f| / ‖w‖₁
    _, r_inf = certify(lin, x, norm="linf")
    assert torch.allclose(r_inf, r / math.sqrt(d))
    assert bool((r_inf <= exact / w.abs().sum()).all())
    # (B,) logits are accepted as the binary case too
    assert torch.allclose(certified_radius(f[:, 0], 1.0), certified_radius(f, 1.0))


def test_floating_point_safety_margin_and_ties():
    logits = torch.tensor([[1.0, 1.0 - 1e-7, 0.0], [2.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    r = certified_radius(logits, 1.0)
    assert r[0] == 0 and r[1] == 0  # below float32 resolution / exact tie: nothing certified
    assert 0 < r[2] < 2.0 / math.sqrt(2)  # the margin and the 1e-6 inflation of L make it strictly smaller
    r0 = certified_radius(logits, 1.0, rtol=0.0)
    assert r0[0] > 0 and r0[1] == 0
    assert r[2] == pytest.approx(2.0 / math.sqrt(2), rel=1e-4)
    # the allowance grows with the magnitude scale of the network's values (certify: 1 + L‖x‖)
    small = torch.tensor([[1e-3, 0.0]])
    assert certified_radius(small, 1.0) > 0
    assert certified_radius(small, 1.0, scale=1e3) == 0
    assert certified_radius(small, 1.0, scale=torch.tensor([1.0])) == certified_radius(small, 1.0)
    with pytest.raises(ValueError, match="scale"):
        certified_radius(small, 1.0, scale=-1.0)


def test_bad_inputs_are_refused():
    good = torch.randn(4, 3)
    with pytest.raises(ValueError, match="non-finite"):
        certified_radius(torch.tensor([[0.0, float("nan")]]), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        certified_radius(torch.tensor([[0.0, float("inf")]]), 1.0)
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lipschitz"):
            certified_radius(good, bad)
    with pytest.raises(ValueError, match="input_dim"):
        certified_radius(good, 1.0, norm="linf")
    with pytest.raises(ValueError, match="norm"):
        certified_radius(good, 1.0, norm="l3")
    with pytest.raises(ValueError, match="rows"):
        certified_radius_last_layer(good, torch.randn(5, 2), 1.0)
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(nn.Linear(3, 2), (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), eps=[-0.1])
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(nn.Linear(3, 2), (torch.randn(4, 3), torch.zeros(4, dtype=torch.long)), eps=[float("nan")])
    with pytest.raises(TypeError):
        certified_radius([[1.0, 0.0]], 1.0)


def test_split_last_linear_and_certify_on_liplayers_model():
    net = L.Sequential(L.BjorckLinear(6, 8), L.MaxMin(), nn.Sequential(L.BjorckLinear(8, 4)))
    body, last = split_last_linear(net)
    x = torch.randn(20, 6)
    net.eval()
    assert torch.allclose(last(body(x)), net(x))
    assert split_last_linear(nn.Sequential(nn.Linear(3, 3), nn.ReLU())) is None
    from liplayers.certify import Certifier

    cert = Certifier(net, (6,))
    assert cert.lipschitz == pytest.approx(lipschitz_bound(net, (6,)), rel=1e-12)
    assert cert.lipschitz_body == pytest.approx(lipschitz_bound(body, (6,)), rel=1e-12)
    pred, r = certify(net, x)
    pred2, r2 = certify(net, x, last_layer=False)
    assert torch.equal(pred, pred2) and bool((r >= r2).all())
    with pytest.raises(ValueError, match="last_layer"):
        certify(nn.Sequential(nn.Linear(6, 3), nn.ReLU()), x, last_layer=True)
