"""dtypes and devices: float64 and float32 everywhere, bfloat16 forward, safe precision.

Rule under test (``liplayers.parametrizations._compute_dtype``): orthonormalization (Björck),
power iteration and the normalization V/σ run in float32 at least — bfloat16/float16 weights
are upcast, the result is rounded back to the weight's dtype; float64 stays float64. The
Lipschitz bound is always measured (float64) on the rounded weight actually used, so the
rounding of a low-precision weight is *seen* by the certificate, never assumed away.
"""
import pathlib
import re

import pytest
import torch
from torch import nn

import liplayers as L
import liplayers.nn as lconv
import liplayers.parametrizations as lparam
import liplayers.parametrizations.bjorck
import liplayers.parametrizations.operator_norm
import liplayers.parametrizations.spectral
from liplayers import certify as C
from liplayers.functional import orthogonality_error, spectral_norm_exact

DENSE = {
    "bjorck": lambda dt: L.BjorckLinear(12, 8, dtype=dt),
    "bjorck_diff": lambda dt: L.BjorckLinear(12, 16, dtype=dt, mode="differentiable"),
    "spectral": lambda dt: L.SpectralLinear(12, 8, dtype=dt),
    "linf": lambda dt: L.LInfLinear(12, 8, dtype=dt),
    "householder": lambda dt: L.HouseholderActivation(12, dim=-1, dtype=dt),
}
CONV = {
    "orthoconv": lambda dt: L.OrthoConv2d(3, 4, 3, dtype=dt),
    "orthoconv_s2": lambda dt: L.OrthoConv2d(2, 8, 3, stride=2, dtype=dt),
    "specconv": lambda dt: L.SpectralConv2d(3, 4, 3, dtype=dt),
    "rko": lambda dt: L.RKOConv2d(3, 4, 3, dtype=dt),
}
ALL = {**DENSE, **CONV}


def _x(name, dtype, batch=3):
    g = torch.Generator().manual_seed(1)
    shape = (batch, 12) if name in DENSE else (batch, 3 if name != "orthoconv_s2" else 2, 6, 6)
    return torch.randn(shape, generator=g).to(dtype)


def _perturb(m: nn.Module, scale=0.02):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p.dtype))


def _jacobian_norm(m: nn.Module, x: torch.Tensor) -> float:
    """Independent measurement: float64 SVD of the eval-mode Jacobian at one point."""
    j = torch.autograd.functional.jacobian(lambda z: m(z.unsqueeze(0)).flatten(), x[0])
    return float(torch.linalg.matrix_norm(j.reshape(j.shape[0], -1).double(), ord=2))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", list(ALL))
def test_full_precision_train_eval_bound(name, dtype):
    m = ALL[name](dtype)
    _perturb(m)
    x = _x(name, dtype).requires_grad_(True)
    y = m.train()(x)
    assert y.dtype == dtype
    y.square().sum().backward()
    for name_p, p in m.named_parameters():  # every parameter takes part in the forward: each gets a gradient
        assert p.grad is not None, name_p
        assert p.grad.dtype == dtype and torch.isfinite(p.grad).all()
    assert x.grad.dtype == dtype
    m.eval()
    ye = m(x.detach())
    assert ye.dtype == dtype and torch.isfinite(ye).all()
    bound = m.lipschitz_bound(tuple(x.shape[1:]))
    measured = _jacobian_norm(m, x.detach())
    assert measured <= bound * (1 + 1e-6), (measured, bound)
    if name != "linf":  # LInfLinear is ∞-Lipschitz by design; its L2 bound can exceed 1
        tol = 1e-8 if dtype == torch.float64 else 1e-4  # bounds carry 1e-9 margins
        assert bound <= 1 + tol, bound


@pytest.mark.parametrize("name", ["bjorck", "bjorck_diff", "spectral", "orthoconv", "rko"])
def test_float64_weights_orthonormal_to_float64_precision(name):
    m = ALL[name](torch.float64)
    _perturb(m)
    m(_x(name, torch.float64))
    w = m.eval_weight().reshape(m.eval_weight().shape[0], -1)
    if name in ("bjorck", "bjorck_diff"):
        assert float(orthogonality_error(w)) < 1e-9
    elif name == "spectral":
        assert abs(float(spectral_norm_exact(w)) - 1) < 1e-8


@pytest.mark.parametrize("name", list(ALL))
def test_bfloat16_forward_and_sound_bound(name):
    m = ALL[name](torch.bfloat16)
    _perturb(m)
    x = _x(name, torch.bfloat16)
    y = m.train()(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    y.float().sum().backward()  # backward runs in bf16 too
    m.eval()
    ye = m(x)
    assert ye.dtype == torch.bfloat16 and torch.isfinite(ye).all()
    bound = m.lipschitz_bound(tuple(x.shape[1:]))
    # the bound is measured on the rounded bf16 weight: it may exceed 1 by the rounding
    # (~2^-8), never by more, and it covers the bf16 weight's exact operator
    if name != "linf":
        assert bound <= 1.05, bound
    # reference: the same eval weights in float64 (exact arithmetic on the bf16 values)
    m64 = L.export(m).double()
    measured = _jacobian_norm(m64, x.double())
    assert measured <= bound * (1 + 1e-6), (measured, bound)
    # outputs agree with the float64 run of the same weights to bf16 precision
    torch.testing.assert_close(ye.double(), m64(x.double()), atol=0.1, rtol=0.05)


def _record(monkeypatch, module, name):
    seen = []
    orig = getattr(module, name)

    def wrapper(*args, **kwargs):
        t = args[0] if isinstance(args[0], torch.Tensor) else None
        if t is not None:
            seen.append(t.dtype)
        return orig(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_bjorck_and_power_iteration_run_in_float32_for_low_precision(monkeypatch, low):
    steps = _record(monkeypatch, lparam.bjorck, "bjorck_step")
    diff = _record(monkeypatch, lparam.bjorck, "bjorck")
    power = _record(monkeypatch, lparam.spectral, "power_iteration")
    a = L.BjorckLinear(8, 8, dtype=low)
    _perturb(a, 0.1)
    a(torch.randn(2, 8, dtype=low))
    assert steps and set(steps) == {torch.float32}
    b = L.BjorckLinear(8, 8, dtype=low, mode="differentiable")
    b(torch.randn(2, 8, dtype=low))
    assert diff and set(diff) == {torch.float32}
    c = L.SpectralLinear(8, 8, dtype=low)
    c(torch.randn(2, 8, dtype=low))
    assert power and set(power) == {torch.float64}
    assert lparam._compute_dtype(low) == torch.float32
    assert lparam._compute_dtype(torch.float64) == torch.float64


def test_spectral_conv_power_iteration_in_float32_for_bfloat16(monkeypatch):
    seen = []
    orig = lparam.operator_norm.conv_operator_power_iteration

    def wrapper(op, u, n_power_iterations=1):
        seen.append(u.dtype)
        return orig(op, u, n_power_iterations)

    monkeypatch.setattr(lparam.operator_norm, "conv_operator_power_iteration", wrapper)
    m = L.SpectralConv2d(3, 4, 3, dtype=torch.bfloat16)
    m(torch.randn(1, 3, 6, 6, dtype=torch.bfloat16))
    assert seen and set(seen) == {torch.float32}


def test_bfloat16_retraction_reaches_float32_accuracy_before_rounding():
    """The retraction's result, before rounding to bf16, is orthonormal to float32 precision."""
    layer = L.BjorckLinear(16, 16, dtype=torch.bfloat16)
    _perturb(layer, 0.05)
    v = layer.parametrizations.weight.original
    q = layer.parametrization.orthonormalize(v.float())  # float32 path of the same algorithm
    assert float(orthogonality_error(q)) < 2e-4
    q16 = layer.parametrization.orthonormalize(v)  # bf16 weight: float32 inside, rounded once
    assert q16.dtype == torch.bfloat16
    assert float(orthogonality_error(q16)) < 4 * 2.0 ** -8 * 4  # rounding of 16 entries per row


def test_dtype_change_after_training_invalidates_caches():
    """Training in float32, then ``.double()``: eval weights recomputed in the new dtype."""
    model = L.Sequential(L.BjorckLinear(6, 6), L.MaxMin(), L.SpectralLinear(6, 4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 6)).square().sum().backward()
        opt.step()
    model.eval()
    x = torch.randn(4, 6)
    y32 = model(x)
    model.double()
    y64 = model(x.double())
    assert y64.dtype == torch.float64
    assert model[0].eval_weight().dtype == torch.float64
    assert model[2].parametrizations.weight[0].u.dtype == torch.float64
    torch.testing.assert_close(y64.float(), y32, atol=1e-4, rtol=1e-4)
    assert C.lipschitz_bound(model) <= 1 + 1e-4


def test_whole_network_float64_and_bfloat16_certify():
    torch.manual_seed(3)
    for dtype, tol in ((torch.float64, 1e-7), (torch.bfloat16, 0.1)):
        net = L.gnp_conv_net(1, 4, input_size=8, width=4, blocks=1, convs_per_block=1, hidden=8).to(dtype)
        x = torch.randn(3, 1, 8, 8, dtype=dtype)
        net.train()(x).float().sum().backward()
        pred, radius = C.certify(net, x)
        assert radius.dtype == torch.float64 and torch.isfinite(radius).all()
        assert C.lipschitz_bound(net, (1, 8, 8)) <= 1 + tol


def test_no_hard_coded_accelerator_in_library():
    """Device-agnostic code: no ``.cuda()``, ``device='cuda'`` or ``torch.cuda`` in liplayers/.

    ``.cpu()`` is allowed only to hand results to numpy/scipy or to collect per-sample results;
    generators created on the CPU are followed by ``.to(device)``.
    """
    root = pathlib.Path(L.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"\.cuda\(|device\s*=\s*['\"]cuda|torch\.cuda\.", code):
                bad.append(f"{path.relative_to(root)}:{i}: {line.strip()}")
            if re.search(r"Generator\(device=['\"]cpu['\"]\)", code):
                # must be moved to the tensor's device on the same or the next line
                window = "\n".join(path.read_text().splitlines()[i - 1:i + 1])
                if ".to(" not in window:
                    bad.append(f"{path.relative_to(root)}:{i}: CPU generator not moved: {line.strip()}")
    assert not bad, "\n".join(bad)
