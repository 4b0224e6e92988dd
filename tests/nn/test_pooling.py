"""Pooling / resampling: bounds against measured Jacobian norms; GNP model builder."""
import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.lipschitz import UnboundedModuleError, lipschitz_bound_of

SHAPE = (2, 8, 8)


def max_jacobian_norm(f, shape, trials=4, seed=0) -> float:
    g = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(trials):
        x = torch.randn(shape, dtype=torch.float64, generator=g).reshape(-1)
        jac = torch.autograd.functional.jacobian(lambda z: f(z.reshape(1, *shape)).reshape(-1), x)
        best = max(best, float(torch.linalg.matrix_norm(jac, ord=2)))
    return best


LINEAR_POOLS = [
    nn.AvgPool2d(2), nn.AvgPool2d(3, 1, 1), nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    nn.AvgPool2d(3, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 2, divisor_override=2), nn.AdaptiveAvgPool2d(3),
    nn.AdaptiveAvgPool2d((1, 1)), nn.LPPool2d(1, 3, 2), L.ScaledAvgPool2d(2), L.ScaledAvgPool2d(3, 1, 1),
    L.ScaledAvgPool2d(4, 2, 1),
]


@pytest.mark.parametrize("m", LINEAR_POOLS, ids=repr)
def test_linear_pool_bounds_exact_with_shape(m):
    meas = max_jacobian_norm(m, SHAPE, trials=1)
    bound = lipschitz_bound_of(m, SHAPE)
    assert meas <= bound <= meas * (1 + 1e-8)
    assert lipschitz_bound_of(m) >= meas


NONLINEAR = [
    nn.MaxPool2d(2), nn.MaxPool2d(3, 1, 1), nn.MaxPool2d(3, 2, ceil_mode=True), nn.MaxPool2d(3, 2, dilation=2),
    nn.AdaptiveMaxPool2d(3), nn.LPPool2d(2, 2), nn.LPPool2d(4, 3, 2), L.L2NormPool2d(2), L.L2NormPool2d(3, 1, 1),
    L.GlobalL2Pool2d(), nn.ReflectionPad2d(3), nn.ReplicationPad2d(2), nn.CircularPad2d(3), nn.ZeroPad2d(2),
    nn.Upsample(scale_factor=2), nn.PixelUnshuffle(2), L.InvertibleDownsampling(2),
]


@pytest.mark.parametrize("m", NONLINEAR, ids=repr)
def test_pool_bounds_are_sound(m):
    meas = max_jacobian_norm(m, SHAPE)
    assert lipschitz_bound_of(m, SHAPE) >= meas - 1e-12
    assert lipschitz_bound_of(m) >= meas - 1e-12


def test_overlapping_max_pool_attains_sqrt_multiplicity():
    """A positive spike sits in 3×3 windows of MaxPool(3, 1, 1): the gain is exactly 3."""
    m = nn.MaxPool2d(3, 1, 1)
    x = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    x[0, 0, 4, 4] = 1.0
    assert torch.isclose(m(x).norm() / x.norm(), torch.tensor(3.0, dtype=torch.float64))
    assert lipschitz_bound_of(m, (1, 8, 8)) == pytest.approx(3.0)


@pytest.mark.parametrize("m", [L.ScaledAvgPool2d(2), L.InvertibleDownsampling(2), L.L2NormPool2d(2)], ids=repr)
def test_nonoverlapping_pools_are_exactly_1_lipschitz(m):
    assert max_jacobian_norm(m, SHAPE) == pytest.approx(1.0, abs=1e-12)
    assert lipschitz_bound_of(m, SHAPE) == pytest.approx(1.0, abs=1e-8)


def test_invertible_resampling_is_orthogonal_and_exports():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    down, up = L.InvertibleDownsampling(2), L.InvertibleUpsampling(2)
    assert torch.equal(up(down(x)), x)
    assert torch.allclose(down(x).norm(), x.norm())
    assert type(L.export(down)) is nn.PixelUnshuffle and type(L.export(up)) is nn.PixelShuffle


def test_l2_pool_export_and_gradient_at_zero():
    m = L.L2NormPool2d(2)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    assert torch.allclose(L.export(m)(x), m(x), atol=1e-6)
    z = torch.zeros(1, 1, 4, 4, requires_grad=True)
    m(z).sum().backward()
    assert torch.isfinite(z.grad).all()
    g = L.GlobalL2Pool2d()
    assert g(x).shape == (2, 3)
    assert torch.allclose(g(x), x.flatten(2).norm(dim=-1), atol=1e-5)


def test_unbounded_torch_modules_raise():
    with pytest.raises(UnboundedModuleError):
        lipschitz_bound_of(nn.LPPool2d(3, 2), SHAPE)
    with pytest.raises(UnboundedModuleError):
        lipschitz_bound_of(nn.Upsample(scale_factor=2, mode="bicubic"), SHAPE)  # negative weights


def test_pool_argument_errors():
    with pytest.raises(ValueError, match="padding"):
        L.ScaledAvgPool2d(2, padding=2)
    with pytest.raises(ValueError):
        L.L2NormPool2d(0)


@pytest.mark.parametrize("cin,size,mode", [(1, 28, "zeros"), (3, 32, "circular")])
def test_gnp_conv_net(cin, size, mode):
    torch.manual_seed(0)
    net = L.gnp_conv_net(cin, 10, size, width=4, hidden=16, convs_per_block=1, padding_mode=mode).double()
    x = torch.randn(2, cin, size, size, dtype=torch.float64)
    net.train()
    assert net(x).shape == (2, 10)
    net.eval()
    shape = (cin, size, size)
    bound = net.lipschitz_bound(shape)
    assert 1.0 <= bound <= 1 + 1e-8
    # soundness at the network level: gradient norms of random logit directions ≤ bound
    xr = x.clone().requires_grad_(True)
    out = net(xr)
    for j in range(3):
        (g,) = torch.autograd.grad(out[:, j].sum(), xr, retain_graph=True)
        assert g.flatten(1).norm(dim=1).max() <= bound * (1 + 1e-9)
    plain = L.export(net)
    assert torch.allclose(plain(x), net(x), atol=1e-10)
    assert lipschitz_bound_of(plain, shape) == pytest.approx(bound, rel=1e-6)


def test_gnp_builders_validate():
    with pytest.raises(ValueError, match="divisible"):
        L.gnp_conv_net(1, 10, 30, blocks=2)
    with pytest.raises(ValueError, match="even"):
        L.gnp_conv_net(1, 10, 28, width=5)
    mlp = L.gnp_mlp(784, 10, (32, 16))
    assert mlp(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    assert mlp.lipschitz_bound() <= 1 + 1e-4
