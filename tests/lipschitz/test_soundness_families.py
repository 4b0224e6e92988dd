"""One test per family of inputs that once made a bound too small or a radius too large."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers import certify as C
from liplayers.lipschitz import UnboundedModuleError, lipschitz_bound_of


# ---- 1. arguments and input sizes of plain torch modules --------------------------------------
def test_elu_negative_alpha_bounded_by_its_slope():
    m = nn.ELU(alpha=-2.0)
    x = torch.linspace(-1e-3, 0, 101, dtype=torch.float64)
    slope = float(((m(x)[1:] - m(x)[:-1]) / (x[1:] - x[:-1])).abs().max())
    assert slope > 1.99
    assert lipschitz_bound_of(m) >= slope


def test_ceil_mode_partial_windows_are_covered():
    avg = nn.AvgPool2d(3, 2, ceil_mode=True)  # torch divides a partial window by its own count
    shape = (1, 4, 4)
    jac = torch.autograd.functional.jacobian(lambda v: avg(v.reshape(1, *shape)).reshape(-1),
                                             torch.zeros(16, dtype=torch.float64))
    assert lipschitz_bound_of(avg, shape) >= float(torch.linalg.matrix_norm(jac, ord=2))
    with pytest.raises(UnboundedModuleError, match="ceil_mode"):
        lipschitz_bound_of(nn.LPPool2d(2, 3, 2, ceil_mode=True), shape)


def test_inputs_smaller_than_the_window():
    pool = nn.AvgPool2d(3, 1, 1, count_include_pad=False)
    shape = (1, 1, 2)  # one row: windows hold 1–2 pixels, weights up to 1/2
    jac = torch.autograd.functional.jacobian(lambda v: pool(v.reshape(1, *shape)).reshape(-1),
                                             torch.zeros(2, dtype=torch.float64))
    assert lipschitz_bound_of(pool, shape) >= float(torch.linalg.matrix_norm(jac, ord=2)) > 0.99


class _Negative(L.LipschitzModule):
    def forward(self, x):
        return 3 * x

    def lipschitz_bound(self, input_shape=None):
        return -3.0


def test_negative_layer_bounds_cannot_multiply_into_a_positive_one():
    with pytest.raises(UnboundedModuleError, match="finite number >= 0"):
        L.lipschitz_bound_of(nn.Sequential(_Negative(), _Negative()))


# ---- 2. state changed after construction -------------------------------------------------------
def test_residual_alpha_changed_after_construction():
    block = L.Residual(nn.Linear(3, 3), alpha=0.5)
    block.alpha = 2.0
    with pytest.raises(UnboundedModuleError, match="alpha"):
        lipschitz_bound_of(block)


def test_activation_dim_changed_to_the_batch_dimension():
    m = L.MaxMin()
    m.dim = 0
    with pytest.raises(UnboundedModuleError, match="batch"):
        lipschitz_bound_of(m, (4,))


def test_torch_argument_changed_after_construction():
    m = nn.LeakyReLU(0.1)
    m.negative_slope = -5.0
    assert lipschitz_bound_of(m) == 5.0


# ---- 3. forward behaviour the registry cannot see ---------------------------------------------
def test_instance_forward_is_refused():
    lin = L.BjorckLinear(3, 3)
    lin.forward = lambda x: 10 * x
    with pytest.raises(UnboundedModuleError, match="instance"):
        lipschitz_bound_of(lin)


def test_overridden_call_and_conv_forward_are_refused():
    class Loud(nn.ReLU):
        def __call__(self, x):
            return 10 * x

    class Strange(nn.Conv2d):
        def _conv_forward(self, x, w, b):
            return 10 * super()._conv_forward(x, w, b)

    class Doubled(L.BjorckLinear):
        def forward(self, x):
            return 2 * super().forward(x)

    for m in (Loud(), Strange(1, 1, 3), Doubled(2, 2)):
        with pytest.raises(UnboundedModuleError, match="overrides"):
            lipschitz_bound_of(m, (1, 5, 5) if isinstance(m, nn.Conv2d) else (2,))


def test_hooks_are_refused():
    lin = nn.Linear(3, 3)
    lin.register_forward_pre_hook(lambda m, i: (10 * i[0],))
    with pytest.raises(UnboundedModuleError, match="hooks"):
        lipschitz_bound_of(nn.Sequential(lin))


# ---- 4. every path to a radius applies the checks ---------------------------------------------
def test_last_layer_path_with_a_given_lipschitz_applies_the_checks():
    torch.manual_seed(0)
    net = L.Sequential(L.BjorckLinear(4, 4), L.MaxMin(), nn.Linear(4, 3))
    x = torch.randn(8, 4)
    net[2].register_forward_hook(lambda m, i, o: 100 * o)  # the head's real output is 100× larger
    with pytest.raises(UnboundedModuleError):
        C.certify(net, x, last_layer=True)
    # a user-supplied bound is trusted for the generic certificate only; the last-layer rule is
    # not applied to a model the registry refuses
    cert = C.Certifier(net, (4,), lipschitz=1000.0)
    assert cert.last_weight is None


# ---- 5. layers that mix samples -----------------------------------------------------------------
@pytest.mark.parametrize("module,shape", [
    (L.MaxMin(dim=0), (4,)), (L.GroupSort(2, dim=-2), (4,)), (nn.Flatten(0), (2, 3)),
    (nn.BatchNorm1d(3, track_running_stats=False), (3,)), (L.HouseholderActivation(4, dim=0), (4,)),
])
def test_modules_mixing_samples_are_refused(module, shape):
    with pytest.raises(UnboundedModuleError):
        lipschitz_bound_of(module, shape)


def test_batch_mixing_flip_would_break_a_certificate():
    """Why: with a sort over the batch, one sample's output moves when another sample does."""
    m = L.FullSort(dim=0)
    a = torch.tensor([[0.0], [1.0]])
    b = torch.tensor([[2.0], [1.0]])  # only sample 0 changed
    assert not torch.equal(m(a)[1], m(b)[1])


# ---- 6. floating point ------------------------------------------------------------------------------
def _staircase():
    first = nn.Linear(1, 1)
    second = nn.Linear(1, 2)
    with torch.no_grad():
        first.weight.fill_(1.0)
        first.bias.fill_(1e6)  # h = x + 10⁶: float32 spacing 0.0625 there
        second.weight.copy_(torch.tensor([[1.0], [0.0]]))
        second.bias.copy_(torch.tensor([-1e6, 1e-3]))  # logits (x, 0.001) in exact arithmetic
    return nn.Sequential(first, second)


def test_large_cancelling_internal_values_widen_the_allowance():
    net = _staircase()
    x = torch.tensor([[0.0313]])
    # float32 computes a staircase: 0.0313 → logit 0.0625 (class 0), 0.0312 → 0 (class 1)
    assert net(x).argmax(1).item() == 0 and net(torch.tensor([[0.0312]])).argmax(1).item() == 1
    # an allowance scaled by the logits and the input only certifies a radius ≈ 0.06, inside which
    # the class flips 10⁻⁴ away
    logits = net(x).detach()
    old = C.certified_radius_last_layer(logits, net[1].weight.detach(), 1.0, scale=1.0 + x.abs().reshape(-1))
    assert float(old[0]) > 1e-3
    # the allowance that tracks the internal magnitudes (≈ 10⁶) certifies nothing here
    pred, radius = C.certify(net, x)
    assert float(radius[0]) < 1e-4
    for xi, r in ((x, float(radius[0])),):
        grid = xi[0, 0] + torch.linspace(-r, r, 2001)
        assert bool((net(grid[:, None]).argmax(1) == pred[0]).all())


# ---- 7. bad input ----------------------------------------------------------------------------------
def test_non_finite_weights_raise_instead_of_infinite_radii():
    net = L.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[0, 0] = float("nan")
    with pytest.raises((ValueError, UnboundedModuleError)):
        C.certify(net, torch.randn(4, 3))


def test_wrong_shapes_and_labels_raise():
    net = L.Sequential(L.BjorckLinear(3, 3), nn.Linear(3, 4))
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="labels"):
        C.certified_accuracy(net, (x, torch.randint(0, 4, (6, 1))), eps=0.1)  # (B, 1) would broadcast
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        C.certified_accuracy(net, (x, torch.full((6,), 7)), eps=0.1)
    with pytest.raises(ValueError, match="batch_size"):
        C.certified_accuracy(net, (x, torch.zeros(6, dtype=torch.long)), eps=0.1, batch_size=0)
    with pytest.raises(ValueError, match="lengths"):
        C.certified_accuracy(net, (x, torch.zeros(5, dtype=torch.long)), eps=0.1)
    with pytest.raises(ValueError):
        C.certify(net, torch.randn(3))  # no batch dimension
    with pytest.raises(ValueError):
        C.certified_radius(torch.randn(4, 3), torch.ones(2))
