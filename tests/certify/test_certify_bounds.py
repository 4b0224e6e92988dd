"""Guaranteed Lipschitz bounds (liplayers.certify.bounds / _torch_bounds) vs independent measurements."""
import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers.certify import attack_check, certify, lipschitz_bound, lipschitz_lower_bound
from liplayers.lipschitz import UnboundedModuleError


def sigma_max(w):
    return float(torch.linalg.matrix_norm(w.detach().double(), ord=2))


def with_top_singular_value(w, top):
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    s = torch.ones_like(s)
    s[0] = top
    return (u * s) @ vh


def jacobian_norm(fn, shape):
    """Exact operator norm of a linear map by its float64 Jacobian."""
    x = torch.randn(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(fn, x).reshape(-1, x.numel())
    return sigma_max(jac)


# ---- a layer with sigma_max = 1.5 makes the bound grow; the certificate shrinks ---------------------------
def test_scaled_plain_linear_in_sequential():
    base = nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 4))
    with torch.no_grad():
        for m in (base[0], base[2]):
            m.weight.copy_(with_top_singular_value(m.weight, 1.0))
    assert lipschitz_bound(base) == pytest.approx(1.0, rel=1e-6)
    with torch.no_grad():
        base[0].weight.copy_(with_top_singular_value(base[0].weight, 1.5))
    assert lipschitz_bound(base) == pytest.approx(1.5, rel=1e-6)


def test_scaled_linear_model_certificate_shrinks_and_would_be_wrong_otherwise():
    torch.manual_seed(1)
    C, d = 4, 8
    q, _ = torch.linalg.qr(torch.randn(d, C))
    model = nn.Sequential(nn.Linear(d, C))
    with torch.no_grad():
        model[0].weight.copy_(1.5 * q.T)  # every singular value 1.5
    x = torch.randn(200, d)
    _, r = certify(model, x, last_layer=False)
    _, r_ok = certify(model, x, lipschitz=1.5, last_layer=False)
    assert torch.allclose(r, r_ok, rtol=1e-5)
    _, r_wrong = certify(model, x, lipschitz=1.0, last_layer=False)  # "the layer is orthogonal", wrong
    assert torch.allclose(r_wrong, 1.5 * r, rtol=1e-3, atol=1e-4)  # up to the float allowance (scale 1 + L‖x‖)
    assert attack_check(model, x, radius=r, torchattacks=None).violations == 0
    rep = attack_check(model, x, radius=r_wrong, torchattacks=None)
    assert rep.violations > 50  # the attack refutes a certificate computed as if the layer were 1-Lipschitz


def test_spectral_linear_with_underestimated_sigma():
    torch.manual_seed(2)
    lin = L.SpectralLinear(8, 8, max_iterations=1)
    with torch.no_grad():
        w = with_top_singular_value(torch.randn(8, 8), 1.5).float()
        lin.parametrizations.weight.original.copy_(w)
        u, _, _ = torch.linalg.svd(w.double())
        lin.parametrizations.weight[0].u.copy_(u[:, 3].float())  # a left singular vector of sigma = 1
    lin.eval()
    used = lin.eval_weight()
    assert sigma_max(used) == pytest.approx(1.5, rel=1e-4)  # the power iteration under-estimated sigma
    assert lipschitz_bound(nn.Sequential(lin, nn.ReLU())) == pytest.approx(sigma_max(used), rel=1e-6)


def test_bjorck_linear_weight_scaled_after_retraction():
    torch.manual_seed(3)
    lin = L.BjorckLinear(8, 8)
    lin.train()
    lin(torch.randn(2, 8))  # retraction onto the manifold
    assert lipschitz_bound(lin) == pytest.approx(1.0, abs=1e-5)
    lin.parametrizations.weight.original.data.mul_(1.5)  # bypasses the version counter: no new retraction
    lin.eval()
    bound = lipschitz_bound(L.Sequential(lin, L.MaxMin()))
    assert bound == pytest.approx(1.5, rel=1e-4)
    # the eval-mode function really stretches by 1.5: the bound follows what runs, not the intention
    w = lin.eval_weight().double()
    _, _, vh = torch.linalg.svd(w)
    a = torch.zeros(1, 8)
    b = vh[:1].float()
    with torch.no_grad():
        ratio = float((lin(b) - lin(a)).norm() / (b - a).norm())
    assert ratio == pytest.approx(1.5, rel=1e-4) and ratio <= bound * (1 + 1e-6)


def test_bjorck_differentiable_one_iteration_reports_true_norm():
    torch.manual_seed(4)
    lin = L.BjorckLinear(12, 6, mode="differentiable", max_iterations=1)
    with torch.no_grad():
        lin.parametrizations.weight.original.copy_(torch.randn(6, 12) * 3)
    lin.eval()
    w = lin.eval_weight()
    assert float(torch.linalg.svdvals(w.double()).min()) < 0.9  # one step: far from orthonormal
    assert lipschitz_bound(lin) == pytest.approx(sigma_max(w), rel=1e-6)


# ---- refusals ------------------------------------------------------------------------------------------
class Weird(nn.Module):
    def forward(self, x):
        return 2 * x


class DoubledSequential(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


def test_unknown_layers_hooks_and_overridden_forward_are_refused():
    with pytest.raises(UnboundedModuleError, match="Weird"):
        lipschitz_bound(nn.Sequential(nn.Linear(3, 3), Weird()))
    with pytest.raises(UnboundedModuleError, match="LayerNorm"):
        lipschitz_bound(nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)))
    with pytest.raises(UnboundedModuleError, match="DoubledSequential"):
        lipschitz_bound(DoubledSequential(nn.Linear(3, 3)))
    legacy = nn.utils.spectral_norm(nn.Linear(3, 3))  # recomputes the weight in a forward pre-hook
    with pytest.raises(ValueError, match="hook"):
        lipschitz_bound(nn.Sequential(legacy))
    m = nn.Sequential(nn.Linear(3, 3))
    m[0].register_forward_hook(lambda mod, inp, out: None)
    with pytest.raises(ValueError, match="hook"):
        lipschitz_bound(m)
    assert lipschitz_bound(m, allow_hooks=True) == pytest.approx(sigma_max(m[0].weight), rel=1e-6)
    bn = nn.BatchNorm1d(3, track_running_stats=False)
    with pytest.raises(UnboundedModuleError, match="batch statistics"):
        lipschitz_bound(bn)
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz_bound(nn.Upsample(size=5, mode="bilinear"))  # depends on the input size
    with pytest.raises(UnboundedModuleError, match="padding_mode"):
        lipschitz_bound(nn.Conv1d(1, 1, 3, padding=1, padding_mode="reflect"))


def test_parametrizations_spectral_norm_uses_current_weight():
    lin = nn.utils.parametrizations.spectral_norm(nn.Linear(6, 6), n_power_iterations=1)
    lin.train()
    lin(torch.randn(2, 6))
    bound = lipschitz_bound(lin)
    lin.eval()
    assert bound == pytest.approx(sigma_max(lin.weight), rel=1e-6)
    assert lin.training is False


# ---- plain torch modules (registered by liplayers.certify where no layer engineer registered one) ------------
# The 2-D modules may be bounded by liplayers.nn / liplayers.nn.pooling instead: these tests only
# assume soundness and reasonable tightness, so they check whichever registration is active.
@pytest.mark.parametrize("module,shape", [
    (nn.Conv2d(2, 4, 3, padding=1), (2, 6, 6)),
    (nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), (4, 7, 7)),
    (nn.Conv2d(2, 3, 3, dilation=2, padding="same"), (2, 7, 7)),
    (nn.Conv1d(3, 2, 4, stride=3), (3, 11)),
    (nn.Conv3d(1, 2, 2, padding=1), (1, 3, 3, 3)),
    (nn.AvgPool2d(3, stride=1, padding=1), (1, 5, 5)),
    (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (1, 6, 6)),
    (nn.AvgPool2d(2), (2, 4, 4)),
    (nn.AvgPool1d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), (1, 8)),
    (nn.AvgPool3d(2, stride=1, divisor_override=3), (1, 3, 3, 3)),
    (nn.AdaptiveAvgPool2d((2, 3)), (1, 5, 7)),
    (nn.AdaptiveAvgPool1d(3), (2, 7)),
])
def test_linear_plain_modules_bound_the_exact_operator_norm(module, shape):
    module = module.double()
    if hasattr(module, "bias") and module.bias is not None:
        with torch.no_grad():
            module.bias.zero_()
    exact = jacobian_norm(lambda z: module(z[None])[0], shape)
    bound = lipschitz_bound(module, shape)
    assert exact <= bound * (1 + 1e-9)
    assert bound <= 3.5 * exact  # sound but not absurdly loose


def test_avgpool_without_input_shape_and_batchnorm():
    pool = nn.AvgPool2d(2).double()
    exact = jacobian_norm(lambda z: pool(z[None])[0], (1, 4, 4))
    assert lipschitz_bound(pool) == pytest.approx(exact, rel=1e-6)  # 1/2 for a 2x2 average
    bn = nn.BatchNorm2d(3).double()
    with torch.no_grad():
        bn.running_var.copy_(torch.tensor([0.25, 1.0, 4.0], dtype=torch.float64))
        bn.weight.copy_(torch.tensor([1.0, -3.0, 0.5], dtype=torch.float64))
    bn.eval()
    assert lipschitz_bound(bn) == pytest.approx(3.0 / math.sqrt(1.0 + bn.eps), rel=1e-6)
    exact = jacobian_norm(lambda z: bn(z[None])[0] - bn(torch.zeros_like(z)[None])[0], (3, 2, 2))
    assert exact <= lipschitz_bound(bn, (3, 2, 2))


@pytest.mark.parametrize("module,shape,expected", [
    (nn.MaxPool2d(3, stride=1), (1, 6, 6), 3.0),
    (nn.MaxPool2d(2), (1, 6, 6), 1.0),
    (nn.MaxPool1d(3, stride=2), (1, 9), math.sqrt(2)),
    (nn.MaxPool3d(2, stride=1), (1, 4, 4, 4), math.sqrt(8)),
    (nn.AdaptiveMaxPool2d(1), (1, 5, 5), 1.0),
    (nn.AdaptiveMaxPool1d(4), (1, 6), math.sqrt(2)),
])
def test_max_pooling_bounds_are_sound_and_tight(module, shape, expected):
    bound = lipschitz_bound(module, shape)
    assert expected * (1 - 1e-9) <= bound <= expected * (1 + 1e-6)
    # tightness: a spike shared by the most windows moves `expected` outputs... by its height
    x = torch.zeros((1, *shape), dtype=torch.float64)
    centre = tuple(s // 2 for s in shape[1:])
    y = x.clone()
    y[(0, 0) + centre] = 1.0
    ratio = float((module(y) - module(x)).norm())
    assert ratio <= bound * (1 + 1e-12)
    # soundness on random pairs
    a, b = torch.randn(50, *shape, dtype=torch.float64), torch.randn(50, *shape, dtype=torch.float64)
    num = (module(a) - module(b)).flatten(1).norm(dim=1)
    assert bool((num <= bound * (a - b).flatten(1).norm(dim=1) * (1 + 1e-12)).all())


def test_activation_constants_bound_the_derivative():
    z = torch.linspace(-12, 12, 200001, dtype=torch.float64, requires_grad=True)
    for act in (nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Hardswish(), nn.SELU(),
                nn.CELU(0.5), nn.LogSigmoid(), nn.Tanhshrink(), nn.Hardsigmoid(),
                nn.PReLU(init=-1.7).double(), nn.ELU(2.0)):
        (g,) = torch.autograd.grad(act(z).sum(), z)
        assert float(g.abs().max()) <= lipschitz_bound(act), type(act).__name__


# ---- lower bound ---------------------------------------------------------------------------------------
def test_lower_bound_below_upper_bound_and_close_on_a_linear_map():
    lin = nn.Linear(7, 5, dtype=torch.float64)
    x = torch.randn(4, 7, dtype=torch.float64)
    assert lipschitz_lower_bound(lin, x, steps=0) == pytest.approx(lipschitz_bound(lin), rel=1e-8)
    net = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 3))
    x = torch.randn(64, 6)
    g = torch.Generator().manual_seed(0)
    lo0 = lipschitz_lower_bound(net, x, steps=0)
    lo = lipschitz_lower_bound(net, x, steps=4, generator=g)
    up = lipschitz_bound(net)
    assert 0 < lo0 <= lo <= up
    # power-iteration path (outputs > max_exact_outputs) agrees with the exact path at the same points
    lo_pow = lipschitz_lower_bound(net, x, steps=0, max_exact_outputs=1, n_power_iterations=50)
    assert lo_pow == pytest.approx(lo0, rel=1e-3) and lo_pow <= up


def test_exported_model_keeps_its_bound():
    net = L.Sequential(L.BjorckLinear(5, 8), L.MaxMin(), L.SpectralLinear(8, 3))
    b = lipschitz_bound(net)
    assert lipschitz_bound(L.export(net)) == pytest.approx(b, rel=1e-6)


def test_conv_pool_batchnorm_model_end_to_end():
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1), nn.GELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    )
    with torch.no_grad():
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].running_mean.normal_()
    net.eval()
    x = torch.rand(32, 1, 8, 8)
    up = lipschitz_bound(net, (1, 8, 8))
    lo = lipschitz_lower_bound(net, x, steps=2, generator=torch.Generator().manual_seed(0))
    assert 0 < lo <= up
    pred, r = certify(net, x)
    assert bool((r > 0).any())
    rep = attack_check(net, x, radius=r, steps=30, torchattacks=None, generator=torch.Generator().manual_seed(0))
    assert rep.violations == 0
    assert lipschitz_bound(L.export(net), (1, 8, 8)) == pytest.approx(up, rel=1e-9)
