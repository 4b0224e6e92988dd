"""Property-based tests (hypothesis), deterministic (``derandomize=True``) and small.

For random layer configurations, random weights (after a few random optimizer-like
perturbations and retractions) and random input pairs:

* ‖f(x) − f(y)‖₂ ≤ bound · ‖x − y‖₂ · (1 + 1e-6), with ``bound`` the model's claimed
  guaranteed Lipschitz bound (:func:`liplayers.certify.lipschitz_bound`), computed in float64;
* the exported plain-torch model computes the same function (eval mode);
* ``state_dict`` round trip: a fresh model that loads the state computes the same function
  and reports the same bound;
* GNP networks (square/wide Björck layers, circular orthogonal convolutions, GroupSort):
  every input gradient of a single logit has norm 1, and ‖J‖₂ = 1 where differentiable.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import liplayers as L
from liplayers import certify as C

SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


# ---------------------------------------------------------------- random models
def _dense_layer(draw, d_in: int):
    kind = draw(st.sampled_from(["bjorck", "bjorck_diff", "spectral", "linf", "linear_scaled", "aol", "cpl", "sll",
                                 "cholesky", "bro", "lln"]))
    d_out = draw(st.sampled_from([2, 4, 6, 8]))
    if kind == "bjorck":
        return L.BjorckLinear(d_in, d_out), d_out
    if kind == "bjorck_diff":
        return L.BjorckLinear(d_in, d_out, mode="differentiable", max_iterations=draw(st.integers(1, 20))), d_out
    if kind == "spectral":
        return L.SpectralLinear(d_in, d_out, max_iterations=draw(st.integers(1, 5))), d_out
    if kind == "linf":
        return L.LInfLinear(d_in, d_out, radius=draw(st.sampled_from([0.5, 1.0, 2.0]))), d_out
    families = {"aol": lambda: L.AOLLinear(d_in, d_out), "cpl": lambda: L.CPLLinear(d_in),
                "sll": lambda: L.SLLLinear(d_in), "cholesky": lambda: L.CholeskyLinear(d_in, d_out),
                "bro": lambda: L.BROLinear(d_in, d_out), "lln": lambda: L.LastLayerNormalizedLinear(d_in, d_out)}
    if kind in families:
        return families[kind](), (d_in if kind in ("cpl", "sll") else d_out)
    lin = nn.Linear(d_in, d_out)  # a plain layer with norm ≠ 1: the bound must see it
    with torch.no_grad():
        lin.weight.mul_(draw(st.sampled_from([0.3, 1.0, 2.5])))
    return lin, d_out


def _activation(draw, d: int, dim: int = -1):
    options = ["maxmin", "fullsort", "relu", "householder"] + [f"group{g}" for g in (2, 3, 4) if d % g == 0]
    kind = draw(st.sampled_from(options))
    if kind == "maxmin" and d % 2 == 0:
        return L.MaxMin(dim=dim)
    if kind == "householder" and d % 2 == 0:
        return L.HouseholderActivation(d, dim=dim)
    if kind.startswith("group"):
        return L.GroupSort(int(kind[5:]), dim=dim)
    if kind == "relu":
        return nn.ReLU()
    return L.FullSort(dim=dim)


@st.composite
def dense_models(draw):
    d0 = draw(st.sampled_from([3, 4, 6]))
    layers, d = [], d0
    for _ in range(draw(st.integers(1, 3))):
        layer, d = _dense_layer(draw, d)
        layers += [layer, _activation(draw, d)]
    return L.Sequential(*layers), (d0,)


@st.composite
def conv_models(draw):
    c0 = draw(st.sampled_from([1, 2]))
    hw = draw(st.sampled_from([4, 6]))
    layers, c = [], c0
    for _ in range(draw(st.integers(1, 2))):
        kind = draw(st.sampled_from(["ortho", "ortho_circ", "spectral", "rko", "plain", "linres", "aol", "cpl", "sll",
                                     "soc", "soc_circ", "cayley", "bro"]))
        c_out = draw(st.sampled_from([2, 4]))
        k = draw(st.sampled_from([1, 2, 3]))
        if kind == "ortho":
            layers.append(L.OrthoConv2d(c, c_out, k, padding="same"))
        elif kind == "ortho_circ":
            layers.append(L.OrthoConv2d(c, c_out, k, padding="same", padding_mode="circular"))
        elif kind == "spectral":
            layers.append(L.SpectralConv2d(c, c_out, 3, padding="same", input_size=(hw, hw)))
        elif kind == "rko":
            layers.append(L.RKOConv2d(c, c_out, 3, padding="same"))
        elif kind in ("linres", "cpl", "sll"):
            c_out = c
            layers.append({"linres": lambda: L.LinearResidualConv2d(c, c, 3), "cpl": lambda: L.CPLConv2d(c, 3),
                           "sll": lambda: L.SLLConv2d(c)}[kind]())
        elif kind == "aol":
            layers.append(L.AOLConv2d(c, c_out, 3, padding=1))
        elif kind in ("soc", "soc_circ"):
            layers.append(L.SOCConv2d(c, c_out, 3, padding_mode="circular" if kind == "soc_circ" else "zeros"))
        elif kind in ("cayley", "bro"):
            layers.append((L.CayleyConv2d if kind == "cayley" else L.BROConv2d)(c, c_out, 3))
        else:
            layers.append(nn.Conv2d(c, c_out, 3, padding=1))
        c = c_out
        layers.append(_activation(draw, c, dim=1))
    if draw(st.booleans()):
        layers.append(draw(st.sampled_from([L.L2NormPool2d(2), L.ScaledAvgPool2d(2), L.InvertibleDownsampling(2)])))
        hw2 = hw // 2
        c2 = c * 4 if isinstance(layers[-1], L.InvertibleDownsampling) else c
    else:
        hw2, c2 = hw, c
    layers += [nn.Flatten(), L.BjorckLinear(c2 * hw2 * hw2, 3)]
    return L.Sequential(*layers), (c0, hw, hw)


def _train_a_little(model: nn.Module, shape, seed: int) -> None:
    """Two Adam steps on a random objective: moves weights off the manifold, then retracts."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    model.train()
    for _ in range(2):
        x = torch.randn((4,) + shape, generator=g, dtype=torch.float64)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    model.eval()


def _pairs(shape, seed: int, scale: float, n: int = 8):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    d = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    # mix of tiny and large perturbations (tiny ones probe the local Jacobian)
    d = d * (scale / d.flatten(1).norm(dim=1)).reshape((n,) + (1,) * len(shape))
    return x, x + d


def _check_lipschitz(model, shape, seed, scale):
    bound = C.lipschitz_bound(model, shape)
    x, y = _pairs(shape, seed, scale)
    with torch.no_grad():
        fx, fy = model(x), model(y)
    lhs = (fx - fy).flatten(1).norm(dim=1)
    rhs = bound * (x - y).flatten(1).norm(dim=1) * (1 + 1e-6)
    assert bool((lhs <= rhs).all()), (float((lhs / rhs).max()), bound)


@settings(max_examples=25, **SETTINGS)
@given(dense_models(), st.integers(0, 2**16), st.sampled_from([1e-4, 0.1, 3.0]))
def test_dense_lipschitz_property(model_shape, seed, scale):
    model, shape = model_shape
    model.double()
    _train_a_little(model, shape, seed)
    _check_lipschitz(model, shape, seed, scale)


@settings(max_examples=10, **SETTINGS)
@given(conv_models(), st.integers(0, 2**16), st.sampled_from([1e-4, 0.5]))
def test_conv_lipschitz_property(model_shape, seed, scale):
    model, shape = model_shape
    model.double()
    _train_a_little(model, shape, seed)
    _check_lipschitz(model, shape, seed, scale)


@settings(max_examples=12, **SETTINGS)
@given(st.one_of(dense_models(), conv_models()), st.integers(0, 2**16))
def test_export_and_state_dict_round_trip(model_shape, seed):
    model, shape = model_shape
    model.double()
    _train_a_little(model, shape, seed)
    x, _ = _pairs(shape, seed, 1.0)
    with torch.no_grad():
        ref = model(x)
    bound = C.lipschitz_bound(model, shape)
    exported = L.export(model)
    assert not any(hasattr(m, "parametrizations") for m in exported.modules())
    with torch.no_grad():
        torch.testing.assert_close(exported(x), ref, rtol=1e-10, atol=1e-12)
    # the bounds of torch types carry a 1e-9 rounding margin per layer (e.g. LPPool2d exported from
    # L2NormPool2d): exporting may add a few of them, never more
    assert C.lipschitz_bound(exported, shape) <= bound * (1 + 1e-8)
    # state_dict round trip into a freshly built model of the same architecture
    clone = _rebuild(model)
    clone.load_state_dict(model.state_dict())
    clone.eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), ref, rtol=1e-10, atol=1e-12)
    assert C.lipschitz_bound(clone, shape) == pytest.approx(bound, rel=1e-9)


def _rebuild(model: nn.Module) -> nn.Module:
    """The same architecture with *different* weights (so loading must overwrite them all)."""
    import copy

    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for b in clone.buffers():
            if b.is_floating_point() and b.numel():
                b.copy_(torch.randn_like(b))
    return clone


@st.composite
def gnp_models(draw):
    """GNP networks: every layer's Jacobian has orthonormal rows (non-increasing widths)."""
    if draw(st.booleans()):
        widths = sorted(draw(st.lists(st.sampled_from([4, 6, 8]), min_size=1, max_size=3)), reverse=True)
        d0 = widths[0] + draw(st.sampled_from([0, 2]))
        layers, d = [], d0
        for w in widths:
            layers += [L.BjorckLinear(d, w), _gnp_activation(draw, w, -1)]
            d = w
        layers.append(L.BjorckLinear(d, 1))
        return L.Sequential(*layers), (d0,)
    c, hw = draw(st.sampled_from([2, 4])), 4
    layers = []
    for _ in range(draw(st.integers(1, 2))):
        layers += [L.OrthoConv2d(c, c, draw(st.sampled_from([2, 3])), padding="same", padding_mode="circular"),
                   _gnp_activation(draw, c, 1)]
    layers += [nn.Flatten(), L.BjorckLinear(c * hw * hw, 1)]
    return L.Sequential(*layers), (c, hw, hw)


def _gnp_activation(draw, d, dim):
    options = ["maxmin", "fullsort"] + [f"group{g}" for g in (2, 4) if d % g == 0]
    kind = draw(st.sampled_from(options))
    if kind == "maxmin":
        return L.MaxMin(dim=dim)
    if kind == "fullsort":
        return L.FullSort(dim=dim)
    return L.GroupSort(int(kind[5:]), dim=dim)


@settings(max_examples=15, **SETTINGS)
@given(gnp_models(), st.integers(0, 2**16))
def test_gnp_property(model_shape, seed):
    """‖∇ₓ f(x)‖₂ = 1 for a single-logit GNP network, at random points, after training steps."""
    model, shape = model_shape
    model.double()
    _train_a_little(model, shape, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((6,) + shape, generator=g, dtype=torch.float64).requires_grad_(True)
    model(x).sum().backward()  # samples are independent: row i of the gradient is ∇f(x_i)
    norms = x.grad.flatten(1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), atol=1e-8, rtol=0)
    assert C.lipschitz_bound(model, shape) == pytest.approx(1.0, abs=1e-8)
