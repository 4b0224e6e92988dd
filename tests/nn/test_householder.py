"""HouseholderActivation (Singla et al. 2022): GNP, 1-Lipschitz, MaxMin at init."""
import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.nn.householder import HouseholderActivation, householder_activation
from liplayers.lipschitz import linf_lipschitz_bound_of


def random_angles(act, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        act.phi.copy_(torch.rand(act.phi.shape, generator=g, dtype=act.phi.dtype) * 4 * math.pi - 2 * math.pi)
    return act


def pair_view(x, dim):
    """(a, b) halves along dim, as the activation pairs them."""
    C = x.shape[dim]
    return x.split(C // 2, dim=dim)


def test_init_is_maxmin_on_the_pairs():
    act = HouseholderActivation(8, dim=-1, dtype=torch.float64)
    x = torch.randn(20, 8, dtype=torch.float64)
    a, b = pair_view(x, -1)
    expected = torch.cat((torch.minimum(a, b), torch.maximum(a, b)), -1)
    assert torch.allclose(act(x), expected, atol=1e-15)


@pytest.mark.parametrize("dim,shape", [(-1, (6, 10)), (1, (3, 6, 4, 5))])
def test_jacobian_is_orthogonal_and_one_of_two_pieces(dim, shape):
    """Measured Jacobian (autograd, float64) is I or the reflection on each pair: orthogonal."""
    act = random_angles(HouseholderActivation(shape[dim], dim=dim, dtype=torch.float64), seed=1)
    x = torch.randn(*shape, dtype=torch.float64)
    n = x.numel()
    J = torch.autograd.functional.jacobian(act, x).reshape(n, n)
    assert torch.allclose(J.T @ J, torch.eye(n, dtype=torch.float64), atol=1e-12)
    # the map is piecewise linear and positively homogeneous: f(x) = J x
    assert torch.allclose(J @ x.reshape(-1), act(x).reshape(-1), atol=1e-12)


def test_gradient_norm_preserved_and_norm_preserved():
    act = random_angles(HouseholderActivation(16, dim=-1, dtype=torch.float64), seed=2)
    x = torch.randn(9, 16, dtype=torch.float64, requires_grad=True)
    y = act(x)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1))  # orthogonal pieces through 0
    v = torch.randn_like(y)
    (grad,) = torch.autograd.grad((y * v).sum(), x)
    assert torch.allclose(grad.norm(dim=-1), v.norm(dim=-1))


def test_continuous_across_the_hyperplane_and_one_lipschitz_on_random_pairs():
    act = random_angles(HouseholderActivation(2, dim=-1, dtype=torch.float64), seed=3)
    phi = float(act.phi.detach())
    theta = torch.tensor([-math.sin(phi / 2), math.cos(phi / 2)], dtype=torch.float64)
    t = torch.tensor([theta[1], -theta[0]])  # a direction in the hyperplane θᵀz = 0
    for s in (1.0, -2.5):
        z = s * t
        above, below = act((z + 1e-9 * theta)[None]), act((z - 1e-9 * theta)[None])
        assert torch.allclose(above, below, atol=1e-8)
    g = torch.Generator().manual_seed(4)
    act16 = random_angles(HouseholderActivation(16, dim=-1, dtype=torch.float64), seed=5)
    x = torch.randn(2000, 16, generator=g, dtype=torch.float64)
    z = x + 0.3 * torch.randn(2000, 16, generator=g, dtype=torch.float64)
    with torch.no_grad():
        ratio = (act16(x) - act16(z)).norm(dim=1) / (x - z).norm(dim=1)
    assert float(ratio.max()) <= act16.lipschitz_bound() * (1 + 1e-12)
    assert act16.lipschitz_bound() == pytest.approx(1.0, abs=1e-12)
    assert float(ratio.max()) > 0.999  # the bound is attained (it is not vacuous)


def test_reflection_branch_matches_householder_matrix():
    act = random_angles(HouseholderActivation(2, dim=-1, dtype=torch.float64), seed=6)
    phi = float(act.phi.detach())
    theta = torch.tensor([-math.sin(phi / 2), math.cos(phi / 2)], dtype=torch.float64)
    R = torch.eye(2, dtype=torch.float64) - 2 * torch.outer(theta, theta)
    g = torch.Generator().manual_seed(7)
    z = torch.randn(500, 2, generator=g, dtype=torch.float64)
    expected = torch.where((z @ theta >= 0)[:, None], z, z @ R.T)
    assert torch.allclose(act(z), expected, atol=1e-14)
    assert bool(((act(z) @ theta) >= -1e-12).all())  # output always in the closed half-space


def test_linf_bound_and_trainable():
    act = HouseholderActivation(4, dim=-1)
    assert act.linf_lipschitz_bound() == pytest.approx(1.0, abs=1e-6)  # MaxMin: a permutation
    with torch.no_grad():
        act.phi.fill_(math.pi / 4)
    assert act.linf_lipschitz_bound() == pytest.approx(math.sqrt(2), rel=1e-6)
    # the ∞ bound is attained: inside the reflected half-space f(x) − f(z) = R(x − z), and
    # d = (1, 1) has ‖Rd‖∞ = √2 ‖d‖∞ for φ = π/4 (pair = channels 0 and 2)
    theta = torch.tensor([-math.sin(math.pi / 8), math.cos(math.pi / 8)])
    p = -10 * theta
    z = torch.tensor([[p[0], 0.0, p[1], 0.0]])
    x = z + 0.01 * torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    ratio = float((act(x) - act(z)).detach().abs().max() / (x - z).abs().max())
    assert ratio == pytest.approx(math.sqrt(2), rel=1e-4)
    assert ratio <= act.linf_lipschitz_bound() * (1 + 1e-5)
    # trainable: phi gets a gradient and a model with it is bounded by the product of bounds
    net = L.Sequential(L.BjorckLinear(4, 6), HouseholderActivation(6, dim=-1), L.BjorckLinear(6, 2))
    x = torch.randn(16, 4)
    net(x).square().sum().backward()
    assert net[1].phi.grad is not None and float(net[1].phi.grad.abs().sum()) > 0
    assert net.lipschitz_bound() <= 1 + 1e-5
    assert L.export(net)(x).shape == (16, 2)
    with pytest.raises(Exception):
        linf_lipschitz_bound_of(nn.Softmax(-1))


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        HouseholderActivation(5)
    with pytest.raises(ValueError, match="channels"):
        HouseholderActivation(4, dim=1)(torch.randn(2, 6))
    with pytest.raises(ValueError, match="phi"):
        householder_activation(torch.randn(2, 4), torch.zeros(3), dim=-1)
