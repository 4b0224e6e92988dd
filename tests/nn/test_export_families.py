"""Export of the layer families: ``to_torch`` equivalents, ONNX, refusals, and bounds without a forward.

* Cayley / BRO (circular and zero padding) and circular SOC: ``to_torch(input_shape)`` is a plain
  ``nn.Conv2d`` with the same outputs as the eval-mode layer (max abs diff ≤ 1e-5 in float32,
  ≤ 1e-12 in float64), and so is its ONNX export run in onnxruntime;
* zero-padded SOC, CPL and SLL have no plain equivalent: ``NotImplementedError``,
  ``liplayers.nn.export`` keeps them, and the modules export to ONNX as they run;
* ``to_torch`` without the input size it needs raises ``InputShapeRequiredError``;
* LinearResidualConv2d and SpectralConv2d report ``lipschitz_bound(input_shape)`` and
  ``to_torch`` before any forward, with the kernel the first forward then uses, bounds checked
  against the float64 Jacobian SVD of the eval map, also after optimizer steps in train mode.
"""
from __future__ import annotations

import io
import warnings

import pytest
import torch
from torch import nn

import liplayers as L
from liplayers import certify as C
from liplayers.lipschitz import InputShapeRequiredError

torch.set_num_threads(1)

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}


def _fill_bias(m: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    if getattr(m, "bias", None) is not None:
        with torch.no_grad():
            m.bias.copy_(torch.randn(m.bias.shape, generator=g, dtype=torch.float64))
    return m


def _x(shape, dtype, seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *shape), generator=g, dtype=torch.float64).to(dtype)


def _max_diff(a, b) -> float:
    return float((a.detach().to(torch.float64) - b.detach().to(torch.float64)).abs().max())


def _jacobian_norm(f, shape) -> float:
    """‖J‖₂ of x ↦ f(x) at 0, float64 (the maps measured here are affine)."""
    x0 = torch.zeros(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: f(v.reshape(1, *shape)).reshape(-1), x0.reshape(-1))
    return float(torch.linalg.matrix_norm(jac, ord=2))


# ------------------------------------------------------------------ Fourier-domain layers
FOURIER = [
    (L.CayleyConv2d, "circular"), (L.CayleyConv2d, "zeros"),
    (L.BROConv2d, "circular"), (L.BROConv2d, "zeros"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("channels", [(3, 3), (2, 4), (4, 2)])
@pytest.mark.parametrize("cls,mode", FOURIER, ids=lambda v: getattr(v, "__name__", v))
def test_fourier_to_torch_equals_eval_layer(cls, mode, channels, dtype):
    torch.manual_seed(0)
    cin, cout = channels
    for hw in ((6, 6), (5, 7), (1, 3)):
        m = _fill_bias(cls(cin, cout, 3, padding_mode=mode, dtype=dtype), 1).eval()
        conv = m.to_torch((cin, *hw))
        assert type(conv) is nn.Conv2d and conv.padding_mode == mode
        x = _x((cin, *hw), dtype)
        with torch.no_grad():
            assert _max_diff(conv(x), m(x)) <= TOL[dtype], hw


def test_fourier_to_torch_bound_of_circular_export_matches():
    """The plain circular conv is the same operator: its registry bound equals the layer's (float64)."""
    torch.manual_seed(0)
    for cls in (L.CayleyConv2d, L.BROConv2d):
        m = cls(3, 3, 3, dtype=torch.float64).eval()
        shape = (3, 5, 6)
        b_plain = C.lipschitz_bound(m.to_torch(shape), shape)
        assert b_plain == pytest.approx(m.lipschitz_bound(shape), rel=1e-9)
        measured = _jacobian_norm(m.to_torch(shape), shape)
        assert measured <= b_plain and b_plain == pytest.approx(measured, rel=2e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("channels,ks", [((3, 3), 3), ((2, 4), 3), ((4, 2), (3, 5)), ((3, 3), 1)])
def test_soc_circular_to_torch_equals_eval_layer(channels, ks, dtype):
    torch.manual_seed(0)
    cin, cout = channels
    m = _fill_bias(L.SOCConv2d(cin, cout, ks, padding_mode="circular", dtype=dtype), 2).eval()
    span = [1 + m.eval_terms * (k - 1) for k in m.kernel_size]
    for hw in ((30, 30), (4, 5), (max(span) // 2, max(span) // 2)):
        if min(hw) <= max(m.kernel_size) // 2:
            continue
        conv = m.to_torch((cin, *hw))
        big = span[0] // 2 <= hw[0] and span[1] // 2 <= hw[1]
        assert tuple(conv.kernel_size) == (tuple(span) if big else hw)
        x = _x((cin, *hw), dtype)
        with torch.no_grad():
            assert _max_diff(conv(x), m(x)) <= TOL[dtype], hw


def test_size_dependent_to_torch_needs_input_shape():
    for m in (L.CayleyConv2d(2, 2, 3), L.BROConv2d(2, 2, 3), L.SOCConv2d(2, 2, 3, padding_mode="circular")):
        with pytest.raises(InputShapeRequiredError, match="input_shape"):
            m.to_torch()
    with pytest.raises(ValueError, match="channels"):
        L.CayleyConv2d(2, 2, 3).to_torch((3, 4, 4))


# ------------------------------------------------------------------ no plain equivalent
def _residual_layers(dtype=torch.float32):
    torch.manual_seed(0)
    return [
        (L.CPLLinear(6, dtype=dtype), (6,)), (L.SLLLinear(6, dtype=dtype), (6,)),
        (L.CPLConv2d(3, 3, dtype=dtype), (3, 5, 6)), (L.SLLConv2d(3, dtype=dtype), (3, 5, 6)),
        (L.CPLConv2d(3, 3, padding_mode="circular", dtype=dtype), (3, 5, 6)),
        (L.SLLConv2d(3, padding_mode="circular", dtype=dtype), (3, 5, 6)),
        (L.SOCConv2d(3, 3, 3, dtype=dtype), (3, 5, 6)),
    ]


def test_refusals_name_the_reason():
    for m, _ in _residual_layers():
        with pytest.raises(NotImplementedError, match="nonlinear|not a convolution"):
            m.to_torch()
    with pytest.raises(NotImplementedError, match="border"):
        L.SOCConv2d(2, 2, 3).to_torch((2, 5, 5))


def test_export_keeps_layers_without_plain_equivalent():
    for m, shape in _residual_layers(torch.float64):
        m = _fill_bias(m, 3).eval()
        x = _x(shape, torch.float64)
        for out in (L.export(m), L.export(m, shape)):
            assert type(out) is type(m) and out is not m
            with torch.no_grad():
                assert _max_diff(out(x), m(x)) <= 1e-12


# ------------------------------------------------------------------ ONNX
def _onnx_outputs(module: nn.Module, x: torch.Tensor):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), buf, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["output"])
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def test_onnx_of_layers_exported_as_they_run():
    """CPL, SLL (zero and circular padding, cold eval caches) and zero-padded SOC, in eval mode."""
    for m, shape in _residual_layers():
        m = _fill_bias(m, 4).eval()
        x = _x(shape, torch.float32)
        got = _onnx_outputs(m, x)
        with torch.no_grad():
            assert _max_diff(got, m(x)) <= 1e-5, type(m).__name__


def test_onnx_of_to_torch_equivalents():
    torch.manual_seed(0)
    shape = (3, 5, 6)
    layers = [cls(3, 3, 3, padding_mode=mode) for cls, mode in FOURIER] + [L.SOCConv2d(3, 3, 3, padding_mode="circular")]
    for m in layers:
        m = _fill_bias(m, 5).eval()
        x = _x(shape, torch.float32)
        got = _onnx_outputs(m.to_torch(shape), x)
        with torch.no_grad():
            assert _max_diff(got, m(x)) <= 1e-5, (type(m).__name__, m.padding_mode)


def test_export_with_input_shape_converts_and_exports_to_onnx(tmp_path):
    pytest.importorskip("onnxruntime")
    from liplayers.onnx import export_onnx

    torch.manual_seed(0)
    net = L.Sequential(
        L.CayleyConv2d(2, 4, 3), L.MaxMin(dim=1), L.BROConv2d(4, 4, 3, padding_mode="zeros"),
        L.SOCConv2d(4, 4, 3, padding_mode="circular"), L.SOCConv2d(4, 4, 3), L.CPLConv2d(4, 3),
        L.SLLConv2d(4, padding_mode="circular"), L.LinearResidualConv2d(4, 4, 3), L.SpectralConv2d(4, 4, 3, padding=1),
        nn.Flatten(), L.CPLLinear(64), L.SLLLinear(64), L.BjorckLinear(64, 3)).eval()
    shape = (2, 4, 4)
    x = _x(shape, torch.float32, n=5)
    plain = L.export(net, shape)  # no forward needed, and the model is not modified
    assert net[7].input_size is None and net[8].parametrization.input_size is None
    kinds = [type(m).__name__ for m in plain]
    assert kinds[:4] == ["Conv2d", "MaxMin", "Conv2d", "Conv2d"] and kinds[7:9] == ["Conv2d", "Conv2d"]
    assert kinds[4:7] == ["SOCConv2d", "CPLConv2d", "SLLConv2d"] and kinds[10:12] == ["CPLLinear", "SLLLinear"]
    with torch.no_grad():
        assert _max_diff(plain(x), net(x)) <= 1e-5
    proto = export_onnx(net, tmp_path / "net.onnx", shape)  # checks onnxruntime against the model
    assert proto is not None


def test_export_without_input_shape_keeps_size_dependent_layers():
    torch.manual_seed(0)
    net = L.Sequential(L.CayleyConv2d(2, 2, 3), L.SpectralConv2d(2, 2, 3, padding=1),
                       L.LinearResidualConv2d(2, 2, 3)).eval()
    plain = L.export(net)
    assert [type(m).__name__ for m in plain] == ["CayleyConv2d", "ParametrizedSpectralConv2d", "LinearResidualConv2d"]
    assert net[1].parametrization.input_size is None and net[2].input_size is None  # not modified
    x = _x((2, 5, 5), torch.float32)
    with torch.no_grad():
        assert _max_diff(plain(x), net(x)) <= 1e-6


# ------------------------------------------------------------------ bounds without a forward
def _fresh(kind: str, mode: str):
    torch.manual_seed(0)
    if kind == "spectral":
        return L.SpectralConv2d(2, 3, 3, padding=1, padding_mode=mode, dtype=torch.float64)
    return L.LinearResidualConv2d(2, 2, 3, padding_mode=mode, dtype=torch.float64,
                                  normalize={"block": "block", "conv": "conv", "none": None}[kind])


def _size_of(m):
    return m.parametrization.input_size if isinstance(m, L.SpectralConv2d) else m.input_size


KINDS = [(k, mode) for k in ("spectral", "block", "conv", "none") for mode in ("zeros", "circular")]


@pytest.mark.parametrize("kind,mode", KINDS)
def test_bound_and_to_torch_without_forward(kind, mode):
    shape = (2, 5, 6) if kind != "spectral" else (2, 5, 6)
    m = _fresh(kind, mode).eval()
    bound = m.lipschitz_bound(shape)
    conv = m.to_torch(shape)
    if kind != "none":
        assert _size_of(m) is None  # a query does not fix the size
    measured = _jacobian_norm(m.to_torch(shape), shape)
    assert measured <= bound * (1 + 1e-9)
    if mode == "circular":
        assert bound == pytest.approx(measured, rel=1e-7)  # exact FFT norm of the kernel used
    if kind in ("spectral", "block") and mode == "circular":
        assert bound == pytest.approx(1.0, abs=1e-7)
    # the first forward on such inputs fixes that size and uses exactly the kernel reported
    x = _x(shape, torch.float64)
    with torch.no_grad():
        y = m(x)
    assert torch.equal(conv.weight, m.to_torch().weight)
    assert m.lipschitz_bound(shape) == bound
    with torch.no_grad():
        assert _max_diff(conv(x), y) <= 1e-12


@pytest.mark.parametrize("kind", ["spectral", "block"])
def test_bound_without_size_is_refused(kind):
    m = _fresh(kind, "zeros").eval()
    for call in (m.lipschitz_bound, m.to_torch, m.eval_weight):
        with pytest.raises(InputShapeRequiredError, match="input_shape"):
            call()
    assert _fresh("none", "zeros").lipschitz_bound() > 0  # no normalization: no size needed


@pytest.mark.parametrize("kind,mode", [("spectral", "circular"), ("block", "circular"), ("none", "circular"),
                                       ("none", "zeros")])
def test_bound_follows_the_weights_in_train_mode(kind, mode):
    """Train mode, Adam steps: the bound is that of the eval map with the current weights (float64)."""
    shape = (2, 5, 5)
    m = _fresh(kind, mode).train()
    before = m.lipschitz_bound(shape)
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    x = _x(shape, torch.float64, n=4)
    for _ in range(3):
        opt.zero_grad()
        m(x).square().sum().neg().backward()
        opt.step()
    assert m.training
    bound = m.lipschitz_bound(shape)
    with L.lipschitz.eval_mode(m):
        measured = _jacobian_norm(lambda v: m(v) - m(torch.zeros_like(v)), shape)
    assert measured <= bound * (1 + 1e-9)
    if mode == "circular":
        assert bound == pytest.approx(measured, rel=1e-7)
    if kind == "none":
        assert bound != pytest.approx(before, rel=1e-3)  # the weights moved: the bound did too


def test_cpl_with_zero_weight_is_the_identity():
    """W = 0 (so c = 0) with a positive bias: the branch vanishes (no 0·∞ = NaN)."""
    for m, shape in ((L.CPLLinear(4, dtype=torch.float64), (4,)), (L.CPLConv2d(2, 3, dtype=torch.float64), (2, 4, 4))):
        with torch.no_grad():
            m.weight.zero_()
            m.bias.fill_(1.0)
        x = _x(shape, torch.float64)
        for mode in (True, False):
            m.train(mode)
            assert torch.equal(m(x), x)
        assert m.lipschitz_bound(shape) == pytest.approx(1.0, abs=1e-8)
