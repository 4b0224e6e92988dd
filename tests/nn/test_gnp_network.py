import copy

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.lipschitz import UnboundedModuleError


def gnp_mlp(dtype=torch.float64):
    # widths never grow from input to output: every layer has orthonormal rows (W Wᵀ = I)
    return L.Sequential(
        L.BjorckLinear(32, 32, dtype=dtype), L.MaxMin(),
        L.BjorckLinear(32, 24, dtype=dtype), L.GroupSort(4),
        L.BjorckLinear(24, 10, dtype=dtype),
    )


def trained(net, steps=5):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(32, 32, dtype=torch.float64)
        loss = net(x).square().mean() - net(x)[:, 0].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_gradient_norm_preservation():
    net = trained(gnp_mlp())
    x = torch.randn(50, 32, dtype=torch.float64, requires_grad=True)
    v = torch.randn(50, 10, dtype=torch.float64)
    (g,) = torch.autograd.grad((net(x) * v).sum(), x)
    assert torch.allclose(g.norm(dim=1), v.norm(dim=1), rtol=1e-8)


def test_lipschitz_bound_holds_on_random_pairs():
    net = trained(gnp_mlp())
    bound = net.lipschitz_bound()
    assert 1.0 <= bound <= 1.0 + 1e-6
    x = torch.randn(500, 32, dtype=torch.float64)
    y = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (net(x) - net(y)).norm(dim=1) / (x - y).norm(dim=1)
    assert float(ratio.max()) <= bound
    assert float(ratio.max()) > 0.5  # the bound is not vacuous either


def test_bound_grows_with_a_scaled_plain_layer_and_unknown_layer_raises():
    lin = nn.Linear(6, 6, dtype=torch.float64)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
        lin.weight.copy_(1.5 * q)
    net = L.Sequential(L.BjorckLinear(6, 6, dtype=torch.float64), lin, L.MaxMin())
    assert net.lipschitz_bound() == pytest.approx(1.5, rel=1e-6)
    assert net.lipschitz_bound() >= 1.5
    class Squash(nn.Module):  # a module no bound is known for
        def forward(self, x):
            return 3 * torch.tanh(x)

    with pytest.raises(UnboundedModuleError, match="Squash"):
        L.Sequential(L.BjorckLinear(4, 4), Squash()).lipschitz_bound()


def test_export_equivalence_without_forward_and_plain_modules():
    net = gnp_mlp(torch.float32)
    # no forward has ever run: export must orthonormalize from the stored parameters
    with torch.no_grad():
        for m in net:
            if isinstance(m, L.BjorckLinear):
                m.parametrizations.weight.original.add_(0.05 * torch.randn_like(m.parametrizations.weight.original))
    exported = L.export(net)
    assert isinstance(exported, nn.Sequential) and not isinstance(exported, L.Sequential)
    assert all(type(m) in (nn.Linear, L.MaxMin, L.GroupSort) for m in exported)
    assert not any(hasattr(m, "parametrizations") for m in exported.modules())
    net.eval()
    x = torch.randn(64, 32)
    assert torch.allclose(exported(x), net(x), atol=1e-6)
    for m in exported:
        if isinstance(m, nn.Linear):
            s = torch.linalg.svdvals(m.weight.detach().double())
            assert float((s - 1).abs().max()) < 1e-4
    # plain torch bound works on the exported model and agrees
    assert L.lipschitz_bound_of(exported) == pytest.approx(net.lipschitz_bound(), rel=1e-5)


def test_state_dict_round_trip_and_modes():
    a = trained(gnp_mlp())
    b = gnp_mlp()
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    b.eval()
    x = torch.randn(8, 32, dtype=torch.float64)
    assert torch.allclose(a(x), b(x), atol=1e-10)
    with torch.no_grad():
        assert torch.allclose(a(x), b(x), atol=1e-10)
    a.train()
    with torch.no_grad():  # train mode: V / max(1, b) between retractions — 1-Lipschitz, maybe not orthogonal
        a(x)
        for m in a.modules():
            if isinstance(m, L.BjorckLinear):
                assert float(torch.linalg.matrix_norm(m.weight, 2)) <= 1 + 1e-9


def test_residual_bound_against_jacobian_svd_and_pairs():
    branch = L.Sequential(L.BjorckLinear(8, 8, dtype=torch.float64), L.MaxMin(dim=-1))
    lin = nn.Linear(8, 8, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.mul_(3.0 / torch.linalg.matrix_norm(lin.weight, ord=2))  # L_f = 3
    block = L.Residual(nn.Sequential(branch, lin), alpha=0.25).eval()
    bound = L.lipschitz_bound_of(block)
    assert bound == pytest.approx(0.75 + 0.25 * 3.0, rel=1e-6)
    x = torch.randn(200, 8, dtype=torch.float64)
    jac = torch.func.vmap(torch.func.jacrev(block))(x)
    assert float(torch.linalg.matrix_norm(jac.detach(), ord=2).max()) <= bound
    with pytest.raises(ValueError, match="alpha"):
        L.Residual(branch, alpha=1.5)
    with pytest.raises(ValueError, match="shape"):
        L.Residual(nn.Linear(8, 4))(torch.randn(2, 8))
    exported = L.export(L.Sequential(block))
    assert torch.allclose(exported(x), block(x), atol=1e-12)


def test_subclass_overriding_forward_is_not_bounded_as_its_parent():
    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(UnboundedModuleError, match="overrides forward"):
        L.lipschitz_bound_of(Doubled(3, 3))

    class Renamed(nn.Linear):  # same forward: the parent's bound applies
        pass

    lin = Renamed(3, 3)
    assert L.lipschitz_bound_of(lin) >= float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2))
