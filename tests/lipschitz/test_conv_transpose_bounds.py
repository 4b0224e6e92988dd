"""Bounds of plain ``nn.ConvTranspose{1,2,3}d`` in the registries, against float64 Jacobians of the module.

Every output padding a forward can use is measured (the configured one and each ``output_size``);
the L2 bound must cover the largest singular value, the ∞ bound the largest row L1 norm (and equal
it when the input size is known: it is the exact value there).
"""
import itertools
import random

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrizations, spectral_norm

from liplayers.functional.conv_transpose import (conv_transpose1d_lipschitz_bound,
                                                 conv_transpose2d_lipschitz_bound, conv_transpose_coverage_bound,
                                                 conv_transpose_linf_bound)
from liplayers.lipschitz import (HookedModuleError, UnboundedModuleError, allow_hooks, linf_lipschitz_bound_of,
                                 lipschitz_bound_of)
from liplayers.nn.conv_transpose import OrthoConvTranspose2d, SpectralConvTranspose2d

TOL = 1 + 1e-12


def jacobians(m, shape, sizes=(None,)):
    """Float64 Jacobians (out, in) of the eval map of ``m`` at a random point, one per ``output_size``."""
    m.eval()
    x = torch.randn(*shape, dtype=torch.float64)
    out = []
    for size in sizes:
        with torch.no_grad():
            kw = {} if size is None else {"output_size": size}
            jac = torch.func.jacrev(lambda v: m(v.unsqueeze(0), **kw)[0])(x)
        out.append(jac.reshape(-1, x.numel()))
    return out


def measured(jacs):
    """(largest singular value, largest row L1 norm) over the Jacobians."""
    sv = max(float(torch.linalg.matrix_norm(j, ord=2)) for j in jacs)
    return sv, max(float(j.abs().sum(1).max()) for j in jacs)


def reachable_sizes(m, shape):
    """``output_size`` of every output padding a forward can use (None: the configured one)."""
    base = [(n - 1) * s - 2 * p + d * (k - 1) + 1
            for n, s, p, d, k in zip(shape[1:], m.stride, m.padding, m.dilation, m.kernel_size)]
    return [None] + [[b + j for b, j in zip(base, extra)] for extra in itertools.product(*map(range, m.stride))]


def geometries(count, rng):
    """Random 2-D geometries with a non-empty output: stride 1–3, padding 0–2, dilation 1–2, groups 1–2."""
    cases = []
    while len(cases) < count:
        g = rng.randint(1, 2)
        cin, cout = g * rng.randint(1, 2), g * rng.randint(1, 2)
        k = (rng.randint(1, 4), rng.randint(1, 4))
        s = (rng.randint(1, 3), rng.randint(1, 3))
        p = (rng.randint(0, 2), rng.randint(0, 2))
        d = (rng.randint(1, 2), rng.randint(1, 2))
        o = tuple(rng.randint(0, max(s[i], d[i]) - 1) for i in range(2))
        hw = (rng.randint(1, 7), rng.randint(1, 7))
        if all((hw[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1 >= 1 for i in range(2)):
            cases.append((cin, cout, k, s, p, o, d, g, hw))
    return cases


GEOMETRIES = geometries(36, random.Random(2024))


@pytest.mark.parametrize("cin,cout,k,s,p,o,d,g,hw", GEOMETRIES)
def test_conv_transpose2d_bounds_cover_the_jacobian(cin, cout, k, s, p, o, d, g, hw):
    m = nn.ConvTranspose2d(cin, cout, k, s, p, o, g, dilation=d, dtype=torch.float64)
    shape = (cin, *hw)
    sizes = reachable_sizes(m, shape)
    sv, l1 = measured(jacobians(m, shape, sizes))
    assert sv <= lipschitz_bound_of(m, shape) * TOL
    assert sv <= lipschitz_bound_of(m) * TOL
    assert sv <= conv_transpose_coverage_bound(m.weight, s, d, g) * TOL
    linf = linf_lipschitz_bound_of(m, shape)
    assert l1 <= linf <= linf_lipschitz_bound_of(m) * TOL
    assert linf <= l1 * (1 + 1e-8)  # exact at a known size (o* is among the measured paddings)
    assert lipschitz_bound_of(m, shape) == conv_transpose2d_lipschitz_bound(m.weight, shape, s, p, o, d, g)


def test_reachable_sizes_cover_every_output_padding():
    m = nn.ConvTranspose2d(1, 1, 3, (3, 2), 1)
    sizes = reachable_sizes(m, (1, 4, 4))
    assert len(sizes) == 7 and [10, 7] in sizes and [12, 8] in sizes  # o = (0, 0) … (2, 1)


@pytest.mark.parametrize("cin,cout,k,s,p,o,hw", [(4, 4, 3, 1, 1, 0, 7), (4, 4, 4, 2, 1, 0, 6), (4, 4, 3, 2, 1, 1, 6),
                                                  (8, 4, 4, 2, 1, 0, 8), (4, 4, 2, 2, 0, 0, 6)])
def test_conv_transpose2d_bound_is_not_loose_at_a_known_size(cin, cout, k, s, p, o, hw):
    m = nn.ConvTranspose2d(cin, cout, k, s, p, o, dtype=torch.float64)
    shape = (cin, hw, hw)
    sv, l1 = measured(jacobians(m, shape, reachable_sizes(m, shape)))
    bound = lipschitz_bound_of(m, shape)
    assert sv <= bound * TOL <= 1.5 * sv
    assert lipschitz_bound_of(m) <= 1.5 * sv
    assert linf_lipschitz_bound_of(m) <= l1 * (1 + 1e-8)  # the phase bound is attained at this size


@pytest.mark.parametrize("cin,cout,k,s,p,o,d,g,n", [(2, 3, 3, 2, 1, 1, 1, 1, 5), (4, 2, 4, 3, 2, 2, 1, 2, 3),
                                                    (3, 3, 2, 1, 0, 1, 2, 3, 1), (2, 2, 5, 2, 2, 0, 2, 1, 7),
                                                    (1, 2, 1, 3, 0, 2, 1, 1, 4)])
def test_conv_transpose1d_bounds_cover_the_jacobian(cin, cout, k, s, p, o, d, g, n):
    m = nn.ConvTranspose1d(cin, cout, k, s, p, o, g, dilation=d, dtype=torch.float64)
    shape = (cin, n)
    sv, l1 = measured(jacobians(m, shape, reachable_sizes(m, shape)))
    assert sv <= lipschitz_bound_of(m, shape) * TOL and sv <= lipschitz_bound_of(m) * TOL
    assert lipschitz_bound_of(m, shape) == conv_transpose1d_lipschitz_bound(m.weight, (n,), s, p, o, d, g)
    assert l1 <= linf_lipschitz_bound_of(m, shape) <= l1 * (1 + 1e-8)
    assert linf_lipschitz_bound_of(m, shape) <= linf_lipschitz_bound_of(m) * TOL


@pytest.mark.parametrize("cin,cout,k,s,p,o,d,g,n", [(2, 2, 3, 2, 1, 1, 1, 1, 3), (2, 4, 2, 1, 0, 1, 2, 2, 2),
                                                    (1, 1, (2, 3, 1), (1, 2, 3), (0, 1, 0), (0, 1, 2), 1, 1, 2)])
def test_conv_transpose3d_bounds_cover_the_jacobian(cin, cout, k, s, p, o, d, g, n):
    m = nn.ConvTranspose3d(cin, cout, k, s, p, o, g, dilation=d, dtype=torch.float64)
    shape = (cin, n, n + 1, n)
    sv, l1 = measured(jacobians(m, shape, reachable_sizes(m, shape)))
    assert sv <= lipschitz_bound_of(m, shape) * TOL == lipschitz_bound_of(m) * TOL
    assert l1 <= linf_lipschitz_bound_of(m, shape) <= l1 * (1 + 1e-8)
    assert linf_lipschitz_bound_of(m, shape) <= linf_lipschitz_bound_of(m) * TOL


def test_coverage_bound_is_exact_for_pointwise_kernels():
    k = torch.randn(3, 5, 1, 1, 1, dtype=torch.float64)
    assert conv_transpose_coverage_bound(k) == pytest.approx(float(torch.linalg.matrix_norm(k.reshape(3, 5), 2)),
                                                             rel=1e-8)


def test_linf_bound_of_an_output_beyond_the_full_map_is_zero():
    k = torch.ones(1, 1, 1, dtype=torch.float64)  # one input pixel, padding 1, output padding 2: one empty output
    assert conv_transpose_linf_bound(k, 3, 1, 1, (1, 1), 1, 2) == 0.0
    assert conv_transpose_linf_bound(k, 3) == pytest.approx(1.0)


def test_hooked_and_parametrized_kernels_use_the_eval_kernel():
    shape = (3, 5, 4)
    legacy = spectral_norm(nn.ConvTranspose2d(3, 2, 3, 2, 1, 1, dtype=torch.float64))
    legacy.train()
    legacy(torch.randn(2, *shape, dtype=torch.float64))  # one power iteration
    with pytest.raises(HookedModuleError):
        lipschitz_bound_of(legacy, shape)
    with allow_hooks():
        sv, l1 = measured(jacobians(legacy, shape, reachable_sizes(legacy, shape)))
        assert sv <= lipschitz_bound_of(legacy, shape) * TOL and l1 <= linf_lipschitz_bound_of(legacy, shape)
    param = parametrizations.spectral_norm(nn.ConvTranspose2d(3, 2, 3, 2, 1, 1, dtype=torch.float64), dim=1)
    param.train()
    param(torch.randn(2, *shape, dtype=torch.float64))
    sv, l1 = measured(jacobians(param, shape, reachable_sizes(param, shape)))
    assert sv <= lipschitz_bound_of(param, shape) * TOL and l1 <= linf_lipschitz_bound_of(param, shape)


@pytest.mark.parametrize("attr,value,match", [("padding_mode", "reflect", "padding_mode"),
                                              ("padding", "same", "padding"), ("padding", (-1, 0), "padding"),
                                              ("stride", (0, 1), "stride"), ("dilation", (1, 2.0), "dilation"),
                                              ("output_padding", (1,), "output_padding"), ("groups", 1.5, "groups"),
                                              ("groups", 2, "kernel"), ("transposed", False, "transposed")])
def test_arguments_outside_the_proof_are_refused(attr, value, match):
    m = nn.ConvTranspose2d(3, 2, 3)
    setattr(m, attr, value)  # read when the bound is computed
    for bound in (lipschitz_bound_of, linf_lipschitz_bound_of):
        with pytest.raises(UnboundedModuleError, match=match):
            bound(m, (3, 4, 4))


def test_changed_call_paths_hooks_and_bad_kernels_are_refused():
    class Doubled(nn.ConvTranspose2d):
        def forward(self, x, output_size=None):
            return 2 * super().forward(x, output_size)

    for bound in (lipschitz_bound_of, linf_lipschitz_bound_of):
        with pytest.raises(UnboundedModuleError, match="Doubled"):
            bound(Doubled(2, 2, 3))
        m = nn.ConvTranspose1d(2, 2, 3)
        m.forward = lambda x, output_size=None: 2 * x
        with pytest.raises(UnboundedModuleError, match="forward"):
            bound(m)
        m = nn.ConvTranspose3d(2, 2, 3)
        m.register_forward_hook(lambda mod, inp, out: 2 * out)
        with pytest.raises(HookedModuleError):
            bound(m)
        m = nn.ConvTranspose2d(2, 2, 3)
        with torch.no_grad():
            m.weight[0, 0, 0, 0] = float("nan")
        with pytest.raises(ValueError, match="non-finite"):
            bound(m)
        with pytest.raises(ValueError, match="channels"):
            bound(nn.ConvTranspose1d(2, 2, 3), (3, 5))


@pytest.mark.parametrize("kwargs,hw", [(dict(kernel_size=3, padding=1), (5, 4)),
                                       (dict(kernel_size=4, stride=2, padding=1, output_padding=1), (4, 3)),
                                       (dict(kernel_size=4, stride=2, padding=1, padding_mode="circular"), (3, 4))])
def test_exported_ortho_conv_transpose_is_certified(kwargs, hw):
    m = OrthoConvTranspose2d(8, 2, **kwargs, dtype=torch.float64)
    with torch.no_grad():
        m.projectors.add_(0.3 * torch.randn_like(m.projectors))
    m.eval()
    exported = m.to_torch()
    assert all(type(c) in (nn.ConvTranspose2d, nn.CircularPad2d) for c in exported.modules() if c is not exported)
    shape = (8, *hw)
    sizes = [None] if kwargs.get("padding_mode") == "circular" else reachable_sizes(m, shape)
    sv, l1 = measured(jacobians(exported, shape, sizes))
    bound = lipschitz_bound_of(exported, shape)
    assert sv <= bound * TOL and sv <= m.lipschitz_bound(shape) * TOL
    assert l1 <= linf_lipschitz_bound_of(exported, shape) and l1 <= m.linf_lipschitz_bound(shape)
    if kwargs.get("padding_mode") != "circular":
        assert bound <= 1.5 * sv and bound <= 1 + 1e-6  # the adjoint of a restricted orthogonal map


def test_exported_spectral_conv_transpose_has_the_same_bounds():
    m = SpectralConvTranspose2d(4, 6, 3, 2, 1, 1, 2, dtype=torch.float64, input_size=(5, 4))
    m.train()
    m(torch.randn(3, 4, 5, 4, dtype=torch.float64))
    m.eval()
    exported = m.to_torch()
    assert type(exported) is nn.ConvTranspose2d
    shape = (4, 5, 4)
    sv, l1 = measured(jacobians(exported, shape, reachable_sizes(exported, shape)))
    for s in (shape, None):
        assert lipschitz_bound_of(exported, s) == pytest.approx(m.lipschitz_bound(s), rel=1e-12)
        assert sv <= lipschitz_bound_of(exported, s) * TOL
        assert l1 <= linf_lipschitz_bound_of(exported, s) == pytest.approx(m.linf_lipschitz_bound(s), rel=1e-12)
    assert lipschitz_bound_of(nn.Sequential(exported, nn.ReLU()), shape) <= 1 + 1e-8
