r"""Guaranteed L2 Lipschitz bounds of more plain ``torch.nn`` modules (eval-mode behaviour).

Registered into :mod:`liplayers.lipschitz` when :mod:`liplayers.certify` is imported, **only
for types that have no bound registered yet** (a layer engineer's own registration, e.g.
``nn.Conv2d`` in ``liplayers/conv.py``, always wins; a registration made later overrides
these). Every bound below is a proved upper bound, computed in float64 and inflated by a
relative ``1e-9`` where it involves arithmetic on weights.

* **Max pooling** (``nn.MaxPool{1,2,3}d``, ``nn.AdaptiveMaxPool{1,2,3}d``):
  |max_w a − max_w b| ≤ max_{i∈w} |a_i − b_i| ≤ ‖(a − b)_w‖₂, and summing the squares over
  windows counts each input at most ``cov`` times, so L ≤ √cov with ``cov`` the largest number
  of windows containing one input. For a window of ``k`` taps, stride ``s`` and dilation
  ``d``, per dimension cov ≤ min(k, ⌊(k − 1)d / s⌋ + 1); dimensions multiply. Adaptive windows
  are counted exactly from the input size (``input_shape`` needed unless the output is 1).
* **Average pooling** (``nn.AvgPool{1,2,3}d``, ``nn.AdaptiveAvgPool{1,2,3}d``): a linear map A
  with non-negative entries, so by the Schur test ‖A‖₂ ≤ √(‖A‖₁‖A‖_∞) = √(max column sum ·
  max row sum). With ``input_shape`` both sums are evaluated exactly (A·1 and Aᵀ·1 by
  autograd, float64), which covers padding, ``ceil_mode``, ``count_include_pad`` and
  ``divisor_override``; without it, only the plain case (no padding, no ``ceil_mode``, no
  ``divisor_override``) is bounded, by √(cov / K) (K taps per window), and a global average
  (output 1) by 1.
* **Batch norm in eval mode** (``nn.BatchNorm{1,2,3}d``, ``nn.SyncBatchNorm``): the affine
  map x ↦ γ(x − μ)/√(σ² + ε) + β with running statistics, L = max |γ| / √(σ² + ε). A batch norm
  without running statistics uses batch statistics even in eval and is refused.
* **Zero-padded convolutions** (``nn.Conv{1,2,3}d``, fallback): y = Σ_p e_p ⊗ K·patch_p(x),
  so ‖y‖² ≤ ‖K‖₂² Σ_p ‖patch_p(x)‖² ≤ cov ‖K‖₂² ‖x‖² with K the (c_out/g) × (c_in/g · Πk)
  reshaped kernel of each group g (block-diagonal over groups: the max over g). This is the
  classic reshaped-kernel bound, sound but up to √cov loose; exact bounds of convolutions
  belong to the convolution layers. Other padding modes (reflect, replicate, circular)
  duplicate inputs and are refused.
* **Elementwise activations**: L = sup |σ'| (computed on a fine float64 grid and rounded up):
  GELU 1.1290 (both forms; max of Φ(x) + xφ(x) = 1.12890 at x = √2), SiLU 1.1 (1.09984),
  Mish 1.089 (1.08850), Hardswish 1.5, SELU scale·α = 1.75810, CELU 1, Softplus 1 (its
  linear switch at βx > threshold leaves a jump ≤ log(1 + e^{−threshold})/β ≈ 2·10⁻⁹/β,
  below the floating-point margin of :func:`~liplayers.certify.certified_radius`),
  LogSigmoid 1, Tanhshrink 1, Hardsigmoid 0.1667 (torch's slope is float32(1/6), above 1/6), PReLU max(1, max|a|), RReLU (eval: slope
  (lower + upper)/2) max(1, |slope|).
* **Constant padding and dropout variants** (eval mode: identity): 1.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from ..functional.spectral import spectral_norm_exact
from ..lipschitz import _REGISTRY, UnboundedModuleError, register_lipschitz_bound

Shape = Optional[Tuple[int, ...]]
_ROUND = 1.0 + 1e-9

__all__: list = []


def _register_if_absent(*types):
    """Like :func:`register_lipschitz_bound`, but never replaces an existing registration."""

    def deco(fn):
        todo = [t for t in types if t not in _REGISTRY]
        if todo:
            register_lipschitz_bound(*todo)(fn)
        return fn

    return deco


def _tuple(v, d: int) -> Tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        if len(v) != d:
            raise ValueError(f"expected {d} values, got {v!r}")
        return tuple(int(a) for a in v)
    return (int(v),) * d


def _dims(m: nn.Module) -> int:
    name = type(m).__name__
    for d in (1, 2, 3):
        if f"{d}d" in name:
            return d
    raise UnboundedModuleError(f"cannot tell the spatial dimension of {name}")  # pragma: no cover


def _coverage(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> int:
    cov = 1
    for k, s, d in zip(kernel, stride, dilation):
        if s < 1 or k < 1 or d < 1:
            raise ValueError(f"invalid kernel/stride/dilation {kernel}/{stride}/{dilation}")
        cov *= min(k, (k - 1) * d // s + 1)
    return cov


def _adaptive_coverage(in_size: int, out_size: Optional[int]) -> int:
    if out_size is None:
        return 1
    counts = [0] * in_size
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)  # ceil
        for p in range(start, end):
            counts[p] += 1
    return max(counts) if counts else 1


def _spatial(input_shape: Shape, d: int, name: str) -> Tuple[int, ...]:
    if input_shape is None or len(input_shape) < d:
        raise ValueError(f"the Lipschitz bound of {name} needs input_shape (without batch) with at least "
                         f"{d} spatial dimensions, got {input_shape}")
    return tuple(int(s) for s in input_shape[-d:])


# ---- pooling ---------------------------------------------------------------------------------
@_register_if_absent(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
def _maxpool_bound(m: nn.Module, input_shape: Shape) -> float:
    if m.return_indices:
        raise UnboundedModuleError(f"{type(m).__name__} with return_indices=True does not return a tensor")
    d = _dims(m)
    k = _tuple(m.kernel_size, d)
    s = _tuple(m.stride if m.stride is not None else m.kernel_size, d)
    dil = _tuple(m.dilation, d)
    return math.sqrt(_coverage(k, s, dil))


@_register_if_absent(nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
def _adaptive_maxpool_bound(m: nn.Module, input_shape: Shape) -> float:
    if m.return_indices:
        raise UnboundedModuleError(f"{type(m).__name__} with return_indices=True does not return a tensor")
    d = _dims(m)
    out = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * d
    if all(o == 1 for o in out):
        return 1.0  # one window (global max): 1-Lipschitz
    spatial = _spatial(input_shape, d, type(m).__name__)
    cov = 1
    for n, o in zip(spatial, out):
        cov *= _adaptive_coverage(n, o)
    return math.sqrt(cov)


def _schur_bound(m: nn.Module, input_shape: Tuple[int, ...]) -> float:
    """√(max row sum · max column sum) of a linear operator with non-negative entries (float64)."""
    x = torch.ones((1, *input_shape), dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = m(x)
        (col,) = torch.autograd.grad(y.sum(), x)
    row = y.detach()
    r = float(row.max()) if row.numel() else 0.0
    c = float(col.max()) if col.numel() else 0.0
    return math.sqrt(max(r, 0.0) * max(c, 0.0)) * _ROUND


@_register_if_absent(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
def _avgpool_bound(m: nn.Module, input_shape: Shape) -> float:
    d = _dims(m)
    if input_shape is not None:
        return _schur_bound(m, tuple(input_shape))
    pad = _tuple(m.padding, d)
    if any(pad) or m.ceil_mode or getattr(m, "divisor_override", None):
        raise ValueError(f"the Lipschitz bound of {type(m).__name__} with padding, ceil_mode or divisor_override "
                         "needs input_shape (without batch)")
    k = _tuple(m.kernel_size, d)
    s = _tuple(m.stride if m.stride is not None else m.kernel_size, d)
    return math.sqrt(_coverage(k, s, (1,) * d) / math.prod(k)) * _ROUND


@_register_if_absent(nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
def _adaptive_avgpool_bound(m: nn.Module, input_shape: Shape) -> float:
    d = _dims(m)
    if input_shape is not None:
        return _schur_bound(m, tuple(input_shape))
    out = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * d
    if all(o == 1 for o in out):
        return 1.0  # global average of N values: 1/√N ≤ 1
    raise ValueError(f"the Lipschitz bound of {type(m).__name__} needs input_shape (without batch)")


# ---- batch norm (eval) -------------------------------------------------------------------
@_register_if_absent(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def _batchnorm_bound(m: nn.modules.batchnorm._BatchNorm, input_shape: Shape) -> float:
    if m.running_var is None or not m.track_running_stats:
        raise UnboundedModuleError(
            f"{type(m).__name__} without running statistics normalizes by batch statistics even in eval "
            "mode: it is not a fixed function of one input, no Lipschitz bound"
        )
    with torch.no_grad():
        var = m.running_var.detach().to(torch.float64)
        scale = 1.0 / torch.sqrt(var + float(m.eps))
        if m.weight is not None:
            scale = scale * m.weight.detach().to(torch.float64)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(f"{type(m).__name__} has non-finite scale (running_var + eps <= 0?)")
        return float(scale.abs().max()) * _ROUND if scale.numel() else 0.0


# ---- convolutions (fallback) ----------------------------------------------------------------
@_register_if_absent(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_bound(m: nn.modules.conv._ConvNd, input_shape: Shape) -> float:
    if m.padding_mode != "zeros":
        raise UnboundedModuleError(
            f"{type(m).__name__} with padding_mode={m.padding_mode!r}: only zero padding is bounded here "
            "(the padding duplicates inputs); use a liplayers convolution"
        )
    d = _dims(m)
    w = m.weight.detach()
    g = m.groups
    co = w.shape[0]
    blocks = w.reshape(g, co // g, -1)
    sigma = float(spectral_norm_exact(blocks).max())
    cov = _coverage(_tuple(m.kernel_size, d), _tuple(m.stride, d), _tuple(m.dilation, d))
    return math.sqrt(cov) * sigma


# ---- activations and identities in eval ----------------------------------------------------
def _const(value: float):
    def fn(m: nn.Module, input_shape: Shape) -> float:
        return value

    return fn


_register_if_absent(nn.GELU)(_const(1.1290))
_register_if_absent(nn.SiLU)(_const(1.1))
_register_if_absent(nn.Mish)(_const(1.089))
_register_if_absent(nn.Hardswish)(_const(1.5))
_register_if_absent(nn.SELU)(_const(1.0507009873554805 * 1.6732632423543772 * _ROUND))
_register_if_absent(nn.CELU, nn.Softplus, nn.LogSigmoid, nn.Tanhshrink)(_const(1.0))
_register_if_absent(nn.Hardsigmoid)(_const(0.1667))  # torch's slope is float32(1/6) = 0.16666667
_register_if_absent(nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d,
                    nn.ZeroPad3d)(_const(1.0))
_register_if_absent(nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.FeatureAlphaDropout)(_const(1.0))


@_register_if_absent(nn.PReLU)
def _prelu_bound(m: nn.PReLU, input_shape: Shape) -> float:
    a = float(m.weight.detach().to(torch.float64).abs().max()) if m.weight.numel() else 0.0
    return max(1.0, a)


@_register_if_absent(nn.RReLU)
def _rrelu_bound(m: nn.RReLU, input_shape: Shape) -> float:
    # eval mode: fixed negative slope (lower + upper) / 2; training-mode slopes lie in [lower, upper]
    return max(1.0, abs(float(m.lower)), abs(float(m.upper)))
