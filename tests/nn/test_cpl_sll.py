"""Residual 1-Lipschitz layers: convex potential (CPL) and SDP-based Lipschitz (SLL) layers.

Every claim is checked against the singular values of the full float64 Jacobian of the
layer (dense) or of the layer on a small image (convolutions), in eval and in training mode.
"""
import pytest
import torch
import torch.nn.functional as F

import liplayers.nn.cpl as cpl_module
import liplayers.nn.sll as sll_module
from liplayers.functional.spectral import power_iteration
from liplayers.nn.cpl import CPLConv2d, CPLLinear, _conv, _conv_adjoint
from liplayers.nn.sll import SLLConv2d, SLLLinear

TOL = 1e-5
F64 = torch.float64


def jacobian_norm(f, x: torch.Tensor) -> float:
    j = torch.autograd.functional.jacobian(f, x)
    return float(torch.linalg.matrix_norm(j.reshape(-1, x.numel()), ord=2))


def train(layer, x, steps: int = 5, lr: float = 0.1) -> None:
    layer.train()
    y = torch.randn_like(x) * 3
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()


def check_1_lipschitz(layer, x_shape, bound_shape):
    """σ_max of the Jacobian ≤ 1 + TOL and ≤ the reported bounds, at a few points, both modes."""
    for mode in ("eval", "train"):
        getattr(layer, mode)()
        for _ in range(2):
            x = torch.randn(*x_shape, dtype=F64)
            sigma = jacobian_norm(layer, x)
            assert sigma <= 1 + TOL, (mode, sigma)
            if mode == "eval":
                assert sigma <= layer.lipschitz_bound(bound_shape)
    layer.eval()
    assert layer.lipschitz_bound(bound_shape) <= 1 + 1e-6
    assert layer.lipschitz_bound() <= 1 + 1e-6


# ---- dense ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [CPLLinear, SLLLinear])
@pytest.mark.parametrize("inner", [None, 3, 9])
def test_dense_after_training_is_1_lipschitz(cls, inner):
    layer = cls(6, inner_features=inner, dtype=F64)
    train(layer, torch.randn(32, 6, dtype=F64))
    check_1_lipschitz(layer, (6,), None)


def test_cpl_normalizer_never_underestimates():
    # W = diag(1, 3) and a power-iteration vector on the *small* singular direction: power
    # iteration from there stays at 1 forever, and a CPL normalized by it would have
    # Jacobian I − 2 WᵀW with eigenvalue −17. The guaranteed normalizer is ≥ 3.
    layer = CPLLinear(2, dtype=F64)
    w = torch.diag(torch.tensor([1.0, 3.0], dtype=F64))
    with torch.no_grad():
        layer.weight.copy_(w)
        layer.bias.fill_(10.0)  # every ReLU active: the worst case
        layer.u.copy_(torch.tensor([1.0, 0.0]))
    sigma_pi, _, _ = power_iteration(w, torch.tensor([1.0, 0.0], dtype=F64), n_power_iterations=50)
    assert float(sigma_pi) == pytest.approx(1.0)  # the trap
    assert layer.normalizer() >= 3.0
    x = torch.zeros(2, dtype=F64)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        assert jacobian_norm(layer, x) <= 1 + 1e-9
    stale = lambda v: v - 2.0 / sigma_pi**2 * F.relu(v @ w.t() + 10.0) @ w  # what a stale estimate gives
    assert jacobian_norm(stale, x) > 10


def test_cpl_conv_normalizer_bounds_the_operator():
    for mode in ("zeros", "circular"):
        layer = CPLConv2d(3, 3, inner_channels=4, padding_mode=mode, dtype=F64)
        x = torch.zeros(1, 3, 6, 6, dtype=F64)
        true = jacobian_norm(lambda v: _conv(v, layer.weight.detach(), None, mode), x)
        assert true <= layer.normalizer((3, 6, 6)) <= true * 1.2


# ---- convolutions ----------------------------------------------------------------------------
CONV_CASES = [(c, inner, k, mode) for (c, inner) in [(2, 3), (3, 2)] for k in (1, 3, 5)
              for mode in ("zeros", "circular")]


@pytest.mark.parametrize("cls", [CPLConv2d, SLLConv2d])
@pytest.mark.parametrize("channels,inner,k,mode", CONV_CASES)
def test_conv_after_training_is_1_lipschitz(cls, channels, inner, k, mode):
    layer = cls(channels, kernel_size=k, inner_channels=inner, padding_mode=mode, dtype=F64)
    train(layer, torch.randn(4, channels, 6, 6, dtype=F64))
    check_1_lipschitz(layer, (1, channels, 6, 6), (channels, 6, 6))


@pytest.mark.parametrize("mode", ["zeros", "circular"])
def test_adjoint_is_exact(mode):
    w = torch.randn(4, 3, 3, 3, dtype=F64)
    x, y = torch.randn(2, 3, 5, 6, dtype=F64), torch.randn(2, 4, 5, 6, dtype=F64)
    torch.testing.assert_close((_conv(x, w, None, mode) * y).sum(), (x * _conv_adjoint(y, w, mode)).sum())


def test_cpl_conv_gradient_through_normalizer_is_exact():
    # the normalizer's gradient comes from the top singular pair at the maximizing frequency:
    # compare with finite differences of the whole training-mode layer
    layer = CPLConv2d(2, 3, inner_channels=2, dtype=F64).train()
    x = torch.randn(1, 2, 4, 4, dtype=F64)

    def f(w):
        with torch.no_grad():
            layer.weight.copy_(w.detach())
        layer.weight.grad = None
        return layer(x)

    w0 = layer.weight.detach().clone()
    out = f(w0)
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * g).sum(), layer.weight)
    d = torch.randn_like(w0)
    eps = 1e-6
    with torch.no_grad():
        fd = ((f(w0 + eps * d) * g).sum() - (f(w0 - eps * d) * g).sum()) / (2 * eps)
    assert float((grad * d).sum()) == pytest.approx(float(fd), rel=1e-5, abs=1e-8)


def test_sll_any_parameters_zero_rows_and_extreme_q():
    layer = SLLConv2d(3, inner_channels=4, dtype=F64)
    with torch.no_grad():
        layer.weight[1] = 0  # a zero inner channel: t = 0 must not produce NaN
        layer.log_q.copy_(torch.tensor([4.0, -3.0, 0.5, -6.0]))
        layer.bias.fill_(5.0)
    check_1_lipschitz(layer, (1, 3, 6, 6), (3, 6, 6))
    dense = SLLLinear(4, inner_features=5, dtype=F64)
    with torch.no_grad():
        dense.log_q.copy_(torch.linspace(-5, 5, 5))
        dense.weight.mul_(100)
    check_1_lipschitz(dense, (4,), None)


# ---- module mechanics ----------------------------------------------------------------------------
MAKERS = [
    lambda: CPLLinear(5, inner_features=3),
    lambda: SLLLinear(5, inner_features=4),
    lambda: CPLConv2d(3, 3, padding_mode="circular"),
    lambda: SLLConv2d(3, inner_channels=5),
]
INPUTS = [(4, 5), (4, 5), (2, 3, 6, 6), (2, 3, 6, 6)]


@pytest.mark.parametrize("idx", range(4))
def test_state_dict_round_trip_and_gradients(idx):
    layer = MAKERS[idx]()
    x = torch.randn(*INPUTS[idx])
    train(layer, x, steps=2)
    for p in layer.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    layer.eval()
    other = MAKERS[idx]()
    other.load_state_dict(layer.state_dict())
    other.eval()
    assert torch.equal(other(x), layer(x))


def test_eval_caches_the_normalizer(monkeypatch):
    calls = {"cpl": 0, "sll": 0}
    conv_norm, inverse_t = cpl_module._conv_norm, sll_module._inverse_t

    def counting_conv_norm(*a, **k):
        calls["cpl"] += 1
        return conv_norm(*a, **k)

    def counting_inverse_t(*a, **k):
        calls["sll"] += 1
        return inverse_t(*a, **k)

    monkeypatch.setattr(cpl_module, "_conv_norm", counting_conv_norm)
    monkeypatch.setattr(sll_module, "_inverse_t", counting_inverse_t)
    cpl, sll = CPLConv2d(2, 3).eval(), SLLConv2d(2).eval()
    x = torch.randn(1, 2, 5, 5)
    for _ in range(3):
        cpl(x), sll(x)
    assert calls == {"cpl": 1, "sll": 1}
    with torch.no_grad():
        cpl.weight.mul_(2)
        sll.log_q.add_(0.5)
    cpl(x), sll(x)
    assert calls == {"cpl": 2, "sll": 2}
    cpl(torch.randn(1, 2, 7, 7))  # a new input size needs the norm at that size
    assert calls["cpl"] == 3


@pytest.mark.parametrize("make", [
    lambda: CPLConv2d(3, 2),
    lambda: SLLConv2d(3, kernel_size=4),
    lambda: SLLConv2d(3, padding_mode="reflect"),
    lambda: CPLConv2d(3, 3, padding_mode="replicate"),
    lambda: CPLConv2d(0, 3),
    lambda: SLLConv2d(3, inner_channels=0),
    lambda: CPLLinear(0),
    lambda: SLLLinear(4, inner_features=-1),
    lambda: CPLLinear(3, bound_iterations=0),
    lambda: CPLLinear(3)(torch.randn(2, 4)),
    lambda: SLLConv2d(3)(torch.randn(2, 4, 5, 5)),
    lambda: SLLConv2d(3)(torch.randn(3, 5, 5)),
])
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("make,shape", [
    (lambda: CPLLinear(4, bias=False, dtype=F64), (3, 4)),
    (lambda: SLLLinear(4, bias=False, dtype=F64), (3, 4)),
    (lambda: CPLConv2d(3, 3, bias=False, dtype=F64), (2, 3, 5, 5)),
    (lambda: SLLConv2d(3, bias=False, dtype=F64), (2, 3, 5, 5)),
])
def test_without_bias(make, shape):
    """bias=False: no bias parameter (nn.Linear's convention), and the layer is still 1-Lipschitz."""
    layer = make()
    assert layer.bias is None and "bias" in layer._parameters and "bias" not in layer.state_dict()
    x = torch.randn(shape, dtype=F64)
    for mode in ("train", "eval"):
        getattr(layer, mode)()
        assert jacobian_norm(layer, x[:1]) <= 1 + 1e-9
    assert layer.lipschitz_bound(shape[1:]) >= jacobian_norm(layer.eval(), x[:1])


@pytest.mark.parametrize("shape,grid", [((5, 5, 3, 3), (7, 9)), ((6, 4, 3, 3), (8, 8)), ((4, 6, 5, 5), (9, 10))])
def test_cpl_training_normalizer_equals_the_reference_fft_norm_and_its_gradient(shape, grid):
    """The autocorrelation route to the per-frequency Gram matrices gives the same exact norm and the
    same top-singular-pair gradient as the symbol route (float64)."""
    torch.manual_seed(sum(shape))
    k = torch.randn(*shape, dtype=torch.float64)
    c_ref, r_ref = cpl_module._conv_norm(k, grid, True)
    c, flat = cpl_module._exact_norm(k, grid)
    assert abs(c - c_ref) <= 1e-13 * c_ref
    torch.testing.assert_close(cpl_module._top_pair_gradient(k, grid, flat), r_ref, rtol=1e-10, atol=1e-12)
    sym = cpl_module.conv_symbol(k, grid, half=True)
    gram = sym.mH @ sym if shape[0] >= shape[1] else (sym @ sym.mH).conj()
    torch.testing.assert_close(cpl_module._gram_symbol(k, grid), gram, rtol=1e-12, atol=1e-12)
