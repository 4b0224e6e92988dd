"""Hypothesis strategies building every module type of the bound registries with arguments drawn
from their whole range (negative, zero, huge, non-finite, boundary values) and small input shapes
(including inputs smaller than the window). Shared by the registry sweep test and
``benchmarks/soundness_sweep.py``."""
from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

import liplayers as L

REALS = st.one_of(
    st.sampled_from([-1e6, -3.0, -2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.25, 0.5, 1.0, 2.0, 10.0, 1e6,
                     math.inf, -math.inf, math.nan]),
    st.floats(-5, 5, allow_nan=False),
)
SMALL = st.integers(1, 5)


def _shape(draw, d: int, c: int):
    return (c, *[draw(st.integers(1, 7)) for _ in range(d)])


def _set(m: nn.Module, **kw) -> nn.Module:
    """Arguments changed after construction: the bound must read them when it is computed."""
    for k, v in kw.items():
        setattr(m, k, v)
    return m


@st.composite
def activation(draw, cls):
    m = cls()
    if cls in (nn.ELU, nn.CELU):
        _set(m, alpha=draw(REALS))
    elif cls is nn.LeakyReLU:
        _set(m, negative_slope=draw(REALS))
    elif cls is nn.RReLU:
        _set(m, lower=draw(REALS), upper=draw(REALS))
    elif cls is nn.Softshrink:
        _set(m, lambd=draw(REALS))
    elif cls is nn.Softplus:
        _set(m, beta=draw(REALS), threshold=draw(st.sampled_from([20.0, 1.0, 0.0, -1.0, math.inf])))
    elif cls is nn.Hardtanh:
        _set(m, min_val=draw(REALS), max_val=draw(REALS))
    elif cls is nn.GELU:
        _set(m, approximate=draw(st.sampled_from(["none", "tanh"])))
    elif cls is nn.PReLU:
        n = draw(st.sampled_from([1, 3]))
        m = nn.PReLU(n)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([draw(REALS) for _ in range(n)]))
        return m.double(), (3, 4)
    return m, (draw(SMALL),)


@st.composite
def linear(draw, cls=nn.Linear):
    i, o = draw(SMALL), draw(SMALL)
    m = nn.Linear(i, o, dtype=torch.float64)
    with torch.no_grad():
        m.weight.mul_(draw(st.sampled_from([0.0, 1e-3, 1.0, 7.0])))
    return m, (i,)


@st.composite
def batchnorm(draw, cls):
    d = {nn.BatchNorm1d: 1, nn.BatchNorm2d: 2, nn.BatchNorm3d: 3, nn.SyncBatchNorm: 2}[cls]
    c = draw(SMALL)
    m = cls(c, affine=draw(st.booleans()), track_running_stats=draw(st.booleans())).double()
    if m.running_var is not None:
        with torch.no_grad():
            m.running_var.copy_(torch.tensor([draw(st.sampled_from([1e-6, 0.1, 1.0, 4.0])) for _ in range(c)]))
    if m.weight is not None:
        with torch.no_grad():
            m.weight.copy_(torch.tensor([draw(st.floats(-3, 3)) for _ in range(c)]))
    _set(m, eps=draw(st.sampled_from([1e-5, 0.0, 1.0])))
    return m, _shape(draw, d if cls is not nn.BatchNorm1d else draw(st.sampled_from([0, 1])), c)


@st.composite
def identity_like(draw, cls):
    if cls is nn.Flatten:
        m = nn.Flatten(draw(st.integers(-3, 2)), draw(st.integers(-1, 2)))
        return m, _shape(draw, 2, draw(SMALL))
    if cls is nn.Unflatten:
        dim = draw(st.integers(-2, 1))
        return nn.Unflatten(dim, (2, 2)), (4, 4)
    return cls(), _shape(draw, {nn.Dropout1d: 1, nn.Dropout3d: 3}.get(cls, 2), draw(SMALL))


@st.composite
def conv(draw, cls):
    d = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[cls]
    g = draw(st.sampled_from([1, 2]))
    cin, cout = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    dil = draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "circular", "reflect", "replicate"]))
    pad = draw(st.one_of(st.integers(0, 3), st.sampled_from(["valid", "same"])))
    if pad == "same" and s != 1:
        pad = 1
    m = cls(cin, cout, k, stride=s, padding=pad, dilation=dil, groups=g, padding_mode=mode, dtype=torch.float64)
    with torch.no_grad():
        m.weight.mul_(draw(st.sampled_from([1.0, 5.0])))
    size = 2 if d == 3 else 6
    return m, (cin, *[draw(st.integers(1, size)) for _ in range(d)])


@st.composite
def pooling(draw, cls):
    name = cls.__name__
    d = int(name[-2]) if name[-2].isdigit() else 2
    k = draw(st.integers(1, 4))
    s = draw(st.one_of(st.none(), st.integers(1, 3)))
    shape = (draw(st.integers(1, 2)), *[draw(st.integers(1, 6 if d < 3 else 4)) for _ in range(d)])
    if name.startswith("AvgPool"):
        p = draw(st.integers(0, k // 2))
        m = cls(k, s, p, ceil_mode=draw(st.booleans()), count_include_pad=draw(st.booleans()),
                **({} if d == 1 else {"divisor_override": draw(st.sampled_from([None, 1, 3]))}))
        if d != 1 and draw(st.booleans()):
            _set(m, divisor_override=draw(st.sampled_from([-2, 0, 5])))
    elif name.startswith("MaxPool"):
        p = draw(st.integers(0, k // 2))
        m = cls(k, s, p, dilation=draw(st.integers(1, 2)), ceil_mode=draw(st.booleans()))
    elif name.startswith("LPPool"):
        m = cls(draw(st.sampled_from([1, 2, 3, 4, 1.5])), k, s, ceil_mode=draw(st.booleans()))
    elif name.startswith("AdaptiveAvg") or name.startswith("AdaptiveMax"):
        m = cls(tuple(draw(st.integers(1, 7)) for _ in range(d)) if d > 1 else draw(st.integers(1, 7)))
    elif name.startswith(("ConstantPad", "ZeroPad", "ReflectionPad", "ReplicationPad", "CircularPad")):
        pads = tuple(draw(st.integers(0, 3)) for _ in range(2 * d))
        m = cls(pads, draw(REALS.filter(math.isfinite))) if name.startswith("ConstantPad") else cls(pads)
    elif name in ("PixelShuffle", "PixelUnshuffle"):
        r = draw(st.integers(1, 2))
        m = cls(r)
        shape = (r * r * draw(st.integers(1, 2)), 2 * r, 2 * r) if name == "PixelShuffle" else (2, 2 * r, 2 * r)
    elif name == "ChannelShuffle":
        m = cls(2)
        shape = (4, 3, 3)
    else:  # Upsample family
        mode = draw(st.sampled_from(["nearest", "nearest-exact", "linear", "bilinear", "trilinear", "bicubic"]))
        dd = {"linear": 1, "trilinear": 3}.get(mode, draw(st.sampled_from([1, 2, 3])) if mode.startswith("nearest") else 2)
        shape = (1, *[draw(st.integers(1, 4)) for _ in range(dd)])
        if cls is nn.Upsample:
            if draw(st.booleans()):
                m = nn.Upsample(scale_factor=draw(st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0])), mode=mode,
                                **({"align_corners": draw(st.booleans())} if mode.endswith("linear") or mode == "bicubic" else {}))
            else:
                m = nn.Upsample(size=draw(st.integers(1, 6)), mode=mode)
        else:
            shape = (1, draw(st.integers(1, 4)), draw(st.integers(1, 4)))
            m = cls(scale_factor=2)
    return m, shape


@st.composite
def sequential(draw, cls=nn.Sequential):
    n = draw(st.integers(1, 3))
    layers = []
    for _ in range(n):
        layers.append(draw(st.sampled_from([lambda: nn.Linear(3, 3, dtype=torch.float64), lambda: nn.ReLU(),
                                            lambda: nn.ELU(-2.0), lambda: nn.LeakyReLU(-3.0)]))())
    return cls(*layers), (3,)


@st.composite
def ours(draw, cls):
    """liplayers modules with arguments changed after construction."""
    if cls in (L.GroupSort, L.MaxMin, L.FullSort):
        m = cls() if cls is not L.GroupSort else cls(draw(st.sampled_from([1, 2, 4])))
        _set(m, dim=draw(st.integers(-3, 2)))
        return m, draw(st.sampled_from([(4,), (4, 2), (2, 4, 4)]))
    if cls is L.Residual:
        m = L.Residual(nn.Linear(3, 3, dtype=torch.float64), alpha=0.5)
        _set(m, alpha=draw(REALS))
        return m, (3,)
    if cls in (L.L2NormPool2d, L.ScaledAvgPool2d):
        m = cls(draw(st.integers(1, 4)), draw(st.integers(1, 3)))
        if cls is L.L2NormPool2d:
            _set(m, eps=draw(st.sampled_from([0.0, 1e-12, -1.0, 1.0])))
        if draw(st.booleans()):
            _set(m, kernel_size=(draw(st.integers(1, 5)),) * 2, stride=(draw(st.integers(1, 3)),) * 2,
                 padding=(draw(st.integers(0, 2)),) * 2)
        return m, (1, draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    if cls is L.GlobalL2Pool2d:
        return _set(cls(), eps=draw(st.sampled_from([0.0, 1e-12, -1.0]))), (2, 3, 3)
    if cls is L.HouseholderActivation:
        m = cls(4, dim=1, dtype=torch.float64)
        with torch.no_grad():
            m.phi.copy_(torch.tensor([draw(REALS.filter(math.isfinite)) for _ in range(2)]))
        _set(m, dim=draw(st.integers(-2, 1)))
        return m, (4,)
    if cls in _FAMILIES:  # layer families: random sizes and modes, weights scaled over a wide range
        m, shape = _FAMILIES[cls](draw, draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                                  draw(st.sampled_from(["zeros", "circular"])), (draw(st.integers(2, 6)),
                                                                                 draw(st.integers(2, 6))))
        with torch.no_grad():
            for p in m.parameters():
                p.mul_(draw(st.sampled_from([0.0, 1e-3, 1.0, 30.0])))
        return m, shape
    raise KeyError(cls)


_F64 = {"dtype": torch.float64}
_FAMILIES = {
    L.LinearResidualConv2d: lambda draw, c, o, mode, hw: (L.LinearResidualConv2d(
        c, c, 3, padding_mode=mode, normalize=draw(st.sampled_from(["block", "conv", None])), **_F64), (c, *hw)),
    L.AOLLinear: lambda draw, c, o, mode, hw: (L.AOLLinear(c, o, **_F64), (c,)),
    L.AOLConv2d: lambda draw, c, o, mode, hw: (L.AOLConv2d(c, o, 3, padding=1, padding_mode=mode, **_F64), (c, *hw)),
    L.CPLLinear: lambda draw, c, o, mode, hw: (L.CPLLinear(c, inner_features=o, **_F64), (c,)),
    L.CPLConv2d: lambda draw, c, o, mode, hw: (L.CPLConv2d(c, 3, o, padding_mode=mode, **_F64), (c, *hw)),
    L.SLLLinear: lambda draw, c, o, mode, hw: (L.SLLLinear(c, o, **_F64), (c,)),
    L.SLLConv2d: lambda draw, c, o, mode, hw: (L.SLLConv2d(c, o, padding_mode=mode, **_F64), (c, *hw)),
    L.SOCConv2d: lambda draw, c, o, mode, hw: (L.SOCConv2d(c, o, 3, padding_mode=mode, **_F64), (c, *hw)),
    L.CayleyConv2d: lambda draw, c, o, mode, hw: (L.CayleyConv2d(c, o, 3, padding_mode=mode, **_F64), (c, *hw)),
    L.BROConv2d: lambda draw, c, o, mode, hw: (L.BROConv2d(c, o, 3, padding_mode=mode, **_F64), (c, *hw)),
    L.BROLinear: lambda draw, c, o, mode, hw: (L.BROLinear(c, o, **_F64), (c,)),
    L.CholeskyLinear: lambda draw, c, o, mode, hw: (L.CholeskyLinear(c, o, **_F64), (c,)),
    L.LastLayerNormalizedLinear: lambda draw, c, o, mode, hw: (L.LastLayerNormalizedLinear(c, o, **_F64), (c,)),
}


@st.composite
def conv_transpose(draw, cls):
    d = {nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}[cls]
    g = draw(st.sampled_from([1, 2]))
    cin, cout = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 2))
    k, s, dil, p = draw(st.integers(1, 4)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 2))
    o = draw(st.integers(0, max(s, dil) - 1))
    m = cls(cin, cout, k, stride=s, padding=p, output_padding=o, groups=g, dilation=dil, dtype=torch.float64)
    with torch.no_grad():
        m.weight.mul_(draw(st.sampled_from([1.0, 5.0])))
    change = draw(st.sampled_from([None, None, "padding_mode", "padding", "stride", "output_padding"]))
    if change == "padding_mode":
        _set(m, padding_mode=draw(st.sampled_from(["reflect", "circular"])))
    elif change == "padding":
        v = draw(st.sampled_from(["same", -1, 3]))
        _set(m, padding=v if isinstance(v, str) else (v,) * d)
    elif change == "stride":
        _set(m, stride=(draw(st.sampled_from([0, 4])),) * d)
    elif change == "output_padding":
        _set(m, output_padding=(draw(st.integers(0, 4)),) * d)
    size = 3 if d == 3 else 6
    return m, (cin, *[draw(st.integers(1, size)) for _ in range(d)])


def strategy_for(cls):
    """The strategy for a registered type, or None if the sweep does not know it."""
    from liplayers.lipschitz import torch_activations as ta
    if cls in ta._CONSTANTS or cls in (nn.ELU, nn.CELU, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.Softshrink):
        return activation(cls)
    if cls is nn.Linear:
        return linear()
    if cls in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm):
        return batchnorm(cls)
    if cls in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
               nn.FeatureAlphaDropout, nn.Flatten, nn.Unflatten):
        return identity_like(cls)
    if cls in (nn.Conv1d, nn.Conv2d, nn.Conv3d):
        return conv(cls)
    if cls in (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d):
        return conv_transpose(cls)
    if cls is nn.Sequential:
        return sequential()
    if cls.__module__.startswith("torch.nn"):
        return pooling(cls)
    return None
