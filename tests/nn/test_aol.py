"""AOL: functional rescaling, the ``AOL`` weight map and ``aol()``, ``AOLLinear`` and ``AOLConv2d``.

Every Lipschitz claim is checked against an independent float64 measurement: the singular
values of the full Jacobian of the layer (dense) or of the convolution on a small image.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from liplayers.functional.aol import abs_gram, aol_rescale, gram_row_sum_bound
from liplayers.nn.aol import AOLConv2d, AOLLinear
from liplayers.parametrizations.aol import AOL, aol

TOL = 1e-5


def jacobian_norm(f, x: torch.Tensor) -> float:
    """Largest singular value of the float64 Jacobian of f at x (one sample, flattened)."""
    j = torch.autograd.functional.jacobian(f, x)
    return float(torch.linalg.matrix_norm(j.reshape(-1, x.numel()), ord=2))


def train(layer: nn.Module, x: torch.Tensor, steps: int = 5, lr: float = 0.1) -> None:
    """A few large Adam steps on a random regression target (moves the weights far)."""
    layer.train()
    y = torch.randn_like(layer(x))
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(layer(x), y).backward()
        opt.step()


# ---- functional ----------------------------------------------------------------------------
def test_abs_gram_matches_the_conv_operator_gram():
    # On a torus larger than the correlation (N ≥ 2k − 1) every shift lands on its own pixel,
    # so the row sums of |AᵀA| of the operator equal Σ_j Σ_t |M_ij[t]| at every pixel.
    k = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    n = 7
    op = lambda x: F.conv2d(F.pad(x.reshape(1, 2, n, n), (1, 1, 1, 1), mode="circular"), k).reshape(-1)
    a = torch.autograd.functional.jacobian(op, torch.zeros(2 * n * n, dtype=torch.float64))
    rows = (a.t() @ a).abs().sum(1).reshape(2, n, n)
    expected = abs_gram(k)[0].sum(1)
    torch.testing.assert_close(rows, expected[:, None, None].expand(2, n, n))


@pytest.mark.parametrize("spatial", [(), (4,), (3, 3), (2, 3, 2)])
def test_abs_gram_any_dimension_and_groups(spatial):
    k = torch.randn(6, 2, *spatial, dtype=torch.float64)
    for groups in (1, 3) if spatial else (1,):
        blocks = abs_gram(k, groups)
        for g in range(groups):
            kg = k[g * (6 // groups):(g + 1) * (6 // groups)]
            if not spatial:
                ref = (kg.t() @ kg).abs()
            else:
                conv = getattr(F, f"conv{len(spatial)}d")
                kt = kg.transpose(0, 1)
                ref = conv(kt, kt, padding=tuple(s - 1 for s in spatial)).abs().sum(tuple(range(2, 2 + len(spatial))))
            torch.testing.assert_close(blocks[g], ref)


def test_aol_dense_formula_and_orthogonal_fixed_point():
    p = torch.randn(5, 4, dtype=torch.float64)
    d = (p.t() @ p).abs().sum(1).rsqrt()
    torch.testing.assert_close(aol_rescale(p), p * d)
    q = torch.linalg.qr(torch.randn(6, 4, dtype=torch.float64))[0]
    torch.testing.assert_close(aol_rescale(q), q)  # PᵀP = I: unchanged
    assert float(torch.linalg.matrix_norm(aol_rescale(p), ord=2)) <= 1 + 1e-12


def test_aol_conv_is_tight_for_a_nonnegative_kernel():
    # With P ≥ 0 the Gram has no cancellation: a constant image is an eigenvector of the
    # circular operator with eigenvalue max row sum, so AOL gives exactly norm 1 — and
    # dropping the shifts from the Gram (a plausible bug) would overshoot by far.
    k = torch.rand(3, 3, 3, 3, dtype=torch.float64)
    circ = lambda w: (lambda v: F.conv2d(F.pad(v, (1, 1, 1, 1), mode="circular"), w))
    x = torch.zeros(1, 3, 6, 6, dtype=torch.float64)
    assert abs(jacobian_norm(circ(aol_rescale(k)), x) - 1) < 1e-12
    kk = k.reshape(3, 3, 9)
    d_no_shift = torch.einsum("oia,oja->ij", kk, kk).abs().sum(1).rsqrt()
    assert jacobian_norm(circ(k * d_no_shift[None, :, None, None]), x) > 1.5


def test_aol_zero_column_stays_finite():
    p = torch.randn(4, 3)
    p[:, 1] = 0
    w = aol_rescale(p)
    assert torch.isfinite(w).all() and (w[:, 1] == 0).all()


def test_gram_row_sum_bound_is_an_upper_bound():
    for shape, pads in [((4, 3, 3, 3), 1), ((3, 5, 5, 5), 2), ((6, 4), None)]:
        k = torch.randn(*shape, dtype=torch.float64)
        if pads is None:
            true = float(torch.linalg.matrix_norm(k, ord=2))
        else:
            x = torch.zeros(1, shape[1], 6, 6, dtype=torch.float64)
            true = jacobian_norm(lambda v: F.conv2d(v, k, padding=pads), x)
        assert gram_row_sum_bound(k) >= true
        assert gram_row_sum_bound(k, log_q="perron") >= true
        assert gram_row_sum_bound(aol_rescale(k), log_q="perron") <= 1 + 1e-9


# ---- dense layer ------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_aol_linear_after_training_is_1_lipschitz(shape):
    layer = AOLLinear(*shape, dtype=torch.float64)
    train(layer, torch.randn(16, shape[0], dtype=torch.float64))
    layer.eval()
    x = torch.randn(shape[0], dtype=torch.float64)
    sigma = jacobian_norm(layer, x)
    bound = layer.lipschitz_bound()
    assert sigma <= 1 + TOL
    assert sigma <= bound <= 1 + 1e-6
    torch.testing.assert_close(layer.weight, aol_rescale(layer.parametrizations.weight.original))


def test_aol_linear_is_a_drop_in():
    layer = AOLLinear(5, 3)
    assert isinstance(layer, nn.Linear) and layer.weight.shape == (3, 5)
    train(layer, torch.randn(8, 5))
    layer.eval()
    x = torch.randn(7, 5)
    assert torch.equal(layer.to_torch()(x), layer(x))
    # state_dict round trip
    other = AOLLinear(5, 3)
    other.load_state_dict(layer.state_dict())
    other.eval()
    assert torch.equal(other(x), layer(x))
    # a plain nn.Linear state dict loads: its weight becomes the stored P
    lin = nn.Linear(5, 3)
    other.load_state_dict(lin.state_dict())
    assert torch.equal(other.parametrizations.weight.original, lin.weight)
    torch.testing.assert_close(other(x), F.linear(x, aol_rescale(lin.weight), lin.bias))


def test_aol_linear_gradient_flows_and_eval_cache():
    layer = AOLLinear(4, 3)
    layer(torch.randn(2, 4)).square().sum().backward()
    g = layer.parametrizations.weight.original.grad
    assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
    assert layer.bias.grad is not None
    layer.eval()
    w1 = layer.weight
    assert layer.weight is w1  # cached: no recomputation per forward
    with torch.no_grad():
        layer.parametrizations.weight.original.mul_(1.5).add_(0.1)
    assert layer.weight is not w1  # recomputed after an in-place change
    torch.testing.assert_close(layer.weight, aol_rescale(layer.parametrizations.weight.original))


# ---- convolution ------------------------------------------------------------------------------
CONV_CASES = [
    # in, out, k, stride, padding, padding_mode, groups
    (2, 4, 1, 1, 0, "zeros", 1),
    (3, 2, 3, 1, 1, "zeros", 1),
    (4, 4, 3, 1, 0, "zeros", 2),
    (2, 3, 5, 1, 2, "zeros", 1),
    (3, 3, 3, 2, 1, "zeros", 1),
    (2, 4, 3, 1, 3, "zeros", 1),
    (4, 2, 3, 1, 1, "circular", 1),
    (2, 2, 5, 1, 2, "circular", 1),
    (4, 4, 1, 1, 0, "circular", 4),
    (3, 4, 3, 1, "same", "circular", 1),
]


@pytest.mark.parametrize("cin,cout,k,stride,padding,mode,groups", CONV_CASES)
def test_aol_conv_after_training_is_1_lipschitz(cin, cout, k, stride, padding, mode, groups):
    layer = AOLConv2d(cin, cout, k, stride, padding, groups=groups, padding_mode=mode, dtype=torch.float64)
    train(layer, torch.randn(4, cin, 6, 6, dtype=torch.float64))
    layer.eval()
    x = torch.randn(1, cin, 6, 6, dtype=torch.float64)
    sigma = jacobian_norm(layer, x)
    assert sigma <= 1 + TOL
    assert sigma <= layer.lipschitz_bound((cin, 6, 6))
    assert sigma <= layer.lipschitz_bound() <= 1 + 1e-6


def test_aol_conv_is_a_drop_in():
    layer = AOLConv2d(3, 4, 3, padding=1, padding_mode="circular")
    assert isinstance(layer, nn.Conv2d) and layer.padding == (1, 1)
    assert AOLConv2d(3, 4, 3).padding == nn.Conv2d(3, 4, 3).padding  # default padding=0 as torch
    train(layer, torch.randn(4, 3, 6, 6))
    layer.eval()
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(layer.to_torch()(x), layer(x))
    other = AOLConv2d(3, 4, 3, padding=1, padding_mode="circular")
    other.load_state_dict(layer.state_dict())
    other.eval()
    assert torch.equal(other(x), layer(x))
    conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular")
    other.load_state_dict(conv.state_dict())
    torch.testing.assert_close(other(x), F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), aol_rescale(conv.weight),
                                                  conv.bias))


def test_aol_conv_starts_orthogonal():
    layer = AOLConv2d(3, 5, 3, padding=1, dtype=torch.float64).eval()
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    j = torch.autograd.functional.jacobian(lambda v: layer(v) - layer.bias[:, None, None], x).reshape(-1, x.numel())
    torch.testing.assert_close(torch.linalg.svdvals(j), torch.ones(x.numel(), dtype=torch.float64))


def test_aol_conv_gradient_flows():
    layer = AOLConv2d(2, 3, 3, padding=1)
    layer(torch.randn(2, 2, 5, 5)).square().sum().backward()
    g = layer.parametrizations.weight.original.grad
    assert torch.isfinite(g).all() and g[:, :, 0, 0].abs().sum() > 0  # off-centre taps learn too


def test_bound_follows_a_padding_changed_after_construction():
    layer = AOLConv2d(2, 2, 3, padding=1, dtype=torch.float64)
    train(layer, torch.randn(4, 2, 6, 6, dtype=torch.float64))
    layer.padding_mode = "replicate"  # outside the AOL guarantee: the bound must see it
    layer.eval()
    x = torch.randn(1, 2, 6, 6, dtype=torch.float64)
    assert jacobian_norm(layer, x) <= layer.lipschitz_bound((2, 6, 6))


# ---- register function -------------------------------------------------------------------------
def test_aol_register_function():
    conv = aol(nn.Conv2d(4, 6, 3, padding=1, groups=2, dtype=torch.float64))
    assert isinstance(conv.parametrizations.weight[0], AOL) and conv.parametrizations.weight[0].groups == 2
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64)
    assert jacobian_norm(lambda v: conv(v) - conv.bias[:, None, None], x) <= 1 + 1e-9
    lin = aol(nn.Linear(3, 7, dtype=torch.float64))
    assert float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)) <= 1 + 1e-9


# ---- bad arguments ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: AOLConv2d(2, 2, 3, padding=1, padding_mode="reflect"),
    lambda: AOLConv2d(2, 2, 3, padding=1, padding_mode="replicate"),
    lambda: AOLConv2d(2, 2, 3, padding=2, padding_mode="circular"),
    lambda: AOLConv2d(0, 2, 3),
    lambda: AOLLinear(0, 3),
    lambda: AOLLinear(3, 2.5),
    lambda: AOL(groups=0),
    lambda: aol(nn.Linear(3, 2), "bias"),
    lambda: aol(nn.ReLU()),
    lambda: aol(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")),
    lambda: aol(nn.Conv2d(4, 4, 3, groups=2), groups=4),
    lambda: aol_rescale(torch.randn(4, 3), groups=2),
])
def test_bad_arguments_raise_value_error(make):
    with pytest.raises(ValueError):
        make()


def test_non_finite_weight_is_refused_in_eval():
    layer = AOLLinear(3, 3).eval()
    with torch.no_grad():
        layer.parametrizations.weight.original[0, 0] = math.nan
    with pytest.raises(ValueError):
        layer(torch.randn(1, 3))
