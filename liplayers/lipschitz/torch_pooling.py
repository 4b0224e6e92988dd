r"""Bounds of plain ``torch.nn`` pooling, resampling, padding and shuffling modules (1-D, 2-D, 3-D).

**Non-negative linear operators** (average pooling, adaptive average pooling, LP pooling with
p = 1, nearest and (bi/tri)linear upsampling, constant / zero / reflection / replication / circular
padding, pixel and channel shuffles). They act on every channel plane alike, so their norm is
that of the map on one plane. When a plane has at most 2,048 entries, the map is *measured on
the module itself*: its float64 Jacobian on one plane is the coefficient matrix A, and the bounds
are its exact spectral norm (L2, SVD) and max row L1 norm (∞), times 1 + 10⁻⁹. For larger planes,
for a linear map A with non-negative entries the Schur test gives ‖A‖₂ ≤ √(‖A‖₁‖A‖_∞) = √(max column sum · max row sum), and ‖A‖_{∞→∞} is exactly the
max row sum. Both sums are *measured on the module itself*, in float64: the row sums are
A·1 = f(1) − f(0) (f(0) removes a constant padding value) and the column sums Aᵀ·1 are the
gradient of Σ f(x). Running the module's own forward makes the bound follow every argument it
has (``ceil_mode``, whose partial windows torch rescales, ``count_include_pad``,
``divisor_override``, ``align_corners``, scale factors, the dimension, inputs smaller than the
window) without a formula per case. It needs ``input_shape``; without it only the cases with a
size-independent proof are bounded (permutations and constant padding: 1; global average: 1;
plain average pooling without padding or ``ceil_mode``: √(cov/k), cov the largest number of
windows containing one input, k the window size). Coefficients must be ≥ 0: bicubic
interpolation and a negative ``divisor_override`` are refused.

**Max-type pooling** (max pooling, adaptive max pooling, LP pooling with even p):
|max_w a − max_w b| ≤ max_{i∈w}|a_i − b_i| ≤ ‖(a − b)_w‖₂ and ‖·‖_p ≤ ‖·‖₂ for p ≥ 2, so summing
the squares over the windows counts each input at most cov times: L2 bound √cov. Per axis,
an input lies in at most min(k, ⌊(k − 1)d/s⌋ + 1) windows whatever the padding, ``ceil_mode`` or
input size; adaptive windows are counted from the input size. ∞ bound: 1 (max), k^{1/p} (LP).
LP pooling with even p and ``ceil_mode`` is refused (torch multiplies partial windows by
k / count, an extra factor).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .checks import feature_dim
from .l2 import register_lipschitz_bound
from .linf import register_linf_lipschitz_bound
from .protocol import InputShapeRequiredError, Shape, UnboundedModuleError

__all__ = ["nonneg_linear_bound"]

_ROUND = 1.0 + 1e-9


def _dims(m: nn.Module) -> int:
    name = type(m).__name__
    for d in (1, 2, 3):
        if name.endswith(f"{d}d"):
            return d
    return 2  # Upsample & co: taken from the input


def _tuple(v, d: int, name: str, m: nn.Module) -> Tuple[int, ...]:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v,) * d
    if len(t) != d or not all(isinstance(a, int) and not isinstance(a, bool) for a in t):
        raise UnboundedModuleError(f"{type(m).__name__}.{name} = {v!r} is not {d} integer(s)")
    return t


_EXACT_MAX = 2048


def nonneg_linear_bound(fn, input_shape: Sequence[int], spatial_dims: int = 2) -> Tuple[float, float]:
    """Guaranteed (L2, ∞→∞) bounds of ``fn``, an affine map acting alike on every channel plane,
    with a non-negative linear part, at ``input_shape`` (without batch; the last ``spatial_dims``
    entries are the plane).

    ``fn`` maps a float64 batch ``(1, 1, *plane)`` to a tensor. Exact (Jacobian SVD) for planes of at
    most 2,048 entries, else Schur's √(max row sum · max column sum) and the max row sum (module
    docstring). Raises UnboundedModuleError if the measured coefficients are negative or non-finite.
    """
    plane = tuple(int(s) for s in input_shape[-spatial_dims:]) if spatial_dims else ()
    shape = (1, *plane)
    n = math.prod(plane)
    if 0 < n <= _EXACT_MAX:
        # at the all-ones point: torch's LP pooling with p = 1 computes sign(s)·relu(|s|), whose
        # autograd derivative vanishes at s = 0 although the map is linear
        x0 = torch.ones((1, *shape), dtype=torch.float64)
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.reshape(x0.shape)).reshape(-1), x0.reshape(-1))
        if not bool(torch.isfinite(jac).all()) or bool((jac < -1e-12).any()):
            raise UnboundedModuleError(f"{getattr(fn, '__name__', type(fn).__name__)}: its coefficients are not "
                                       "finite and >= 0; no bound")
        l2 = float(torch.linalg.matrix_norm(jac, ord=2)) if jac.numel() else 0.0
        linf = float(jac.abs().sum(1).max()) if jac.numel() else 0.0
        return l2 * _ROUND, linf * _ROUND
    r, c = _nonneg_sums(fn, shape)
    return math.sqrt(r * c) * _ROUND, r * _ROUND


def _nonneg_sums(m, input_shape: Sequence[int]) -> Tuple[float, float]:
    """(max row sum, max column sum) of the non-negative linear part of ``m`` at ``input_shape`` (float64)."""
    shape = (1, *input_shape)
    x = torch.ones(shape, dtype=torch.float64, requires_grad=True)
    with torch.enable_grad():
        y = m(x)
        (col,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
    with torch.no_grad():
        row = (y - m(torch.zeros(shape, dtype=torch.float64))).detach()
    col = torch.zeros_like(x) if col is None else col
    for name, t in (("row", row), ("column", col)):
        if not bool(torch.isfinite(t).all()) or bool((t < -1e-12).any()):
            raise UnboundedModuleError(f"{getattr(m, '__name__', type(m).__name__)}: its {name} sums are not finite and >= 0, so it is not a "
                                       "non-negative linear map; no bound")
    r = float(row.max()) if row.numel() else 0.0
    c = float(col.max()) if col.numel() else 0.0
    return max(r, 0.0), max(c, 0.0)


def _needs_shape(m: nn.Module, input_shape: Shape, d: int) -> Tuple[int, ...]:
    if input_shape is None or len(input_shape) < d:
        raise InputShapeRequiredError(
            f"the bound of {type(m).__name__} with these arguments depends on the input size: pass input_shape "
            f"(without batch, at least {d} spatial dimensions), got {input_shape}")
    return tuple(int(s) for s in input_shape)


def _coverage(k: Sequence[int], s: Sequence[int], dil: Sequence[int], m: nn.Module) -> int:
    cov = 1
    for kk, ss, dd in zip(k, s, dil):
        if kk < 1 or ss < 1 or dd < 1:
            raise UnboundedModuleError(f"{type(m).__name__}: kernel/stride/dilation {k}/{s}/{dil} must be >= 1")
        cov *= min(kk, (kk - 1) * dd // ss + 1)
    return cov


# ---- non-negative linear operators ------------------------------------------------------------
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ADAPTIVE_AVG = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
_COPY_PADS = (nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
              nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d, nn.CircularPad2d, nn.CircularPad3d)
_PERMUTATIONS = (nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle)
_UPSAMPLE = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
_LP = (nn.LPPool1d, nn.LPPool2d, nn.LPPool3d)


def _check_linear_args(m: nn.Module) -> None:
    if isinstance(m, _PADS) and not math.isfinite(float(m.value)):
        raise UnboundedModuleError(f"{type(m).__name__}.value = {m.value!r}: a non-finite padding value")
    if isinstance(m, _AVG):
        div = getattr(m, "divisor_override", None)
        if div is not None and (isinstance(div, bool) or not isinstance(div, int) or div <= 0):
            raise UnboundedModuleError(f"{type(m).__name__}.divisor_override = {div!r}: only None or a positive int")
    if isinstance(m, _UPSAMPLE) and m.mode not in ("nearest", "nearest-exact", "linear", "bilinear", "trilinear"):
        raise UnboundedModuleError(f"{type(m).__name__}.mode = {m.mode!r}: its interpolation weights can be negative; "
                                   "only nearest and (bi/tri)linear modes are bounded")


def _size_free_bound(m: nn.Module) -> Optional[float]:
    """L2 bound valid at every input size (Schur's test with worst-case sums), or None."""
    d = _dims(m)
    if isinstance(m, _PERMUTATIONS + _PADS):
        return 1.0
    if isinstance(m, _ADAPTIVE_AVG):  # rows sum to 1; an input is in at most o windows per axis
        out = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * d
        return math.sqrt(math.prod(1 if o is None else o for o in out)) * _ROUND
    if isinstance(m, _COPY_PADS):  # the largest number of copies of one input, per axis
        pad = _tuple(m.padding, 2 * d, "padding", m)
        copies = 1
        for i in range(d):
            left, right = pad[2 * i], pad[2 * i + 1]
            if left or right:
                copies *= 1 + left + right if isinstance(m, (nn.ReplicationPad1d, nn.ReplicationPad2d,
                                                              nn.ReplicationPad3d)) else 3
        return math.sqrt(copies)
    if isinstance(m, _UPSAMPLE) and m.mode in ("nearest", "nearest-exact") and m.scale_factor is not None:
        sf = m.scale_factor if isinstance(m.scale_factor, (tuple, list)) else (m.scale_factor,)
        if not all(isinstance(f, (int, float)) and math.isfinite(f) and f > 0 for f in sf):
            raise UnboundedModuleError(f"{type(m).__name__}.scale_factor = {m.scale_factor!r}")
        # each input is copied at most ⌈f⌉ times per axis (axes without a factor listed: the worst listed one)
        return math.sqrt(max(math.ceil(f) for f in sf) ** 3) if len(sf) == 1 else math.sqrt(math.prod(math.ceil(f) for f in sf))
    if isinstance(m, _AVG):
        k = _tuple(m.kernel_size, d, "kernel_size", m)
        s = _tuple(m.stride if m.stride is not None else m.kernel_size, d, "stride", m)
        pad = _tuple(m.padding, d, "padding", m)
        cov = _coverage(k, s, (1,) * d, m)
        if getattr(m, "divisor_override", None) is not None:  # coefficients 1/D: rows sum to ≤ Πk/D, columns to ≤ cov/D
            return math.sqrt(cov * math.prod(k)) / m.divisor_override * _ROUND
        # rows sum to ≤ 1; a column to ≤ cov / (smallest divisor): Πk, or 1 for partial windows
        smallest = 1 if (m.ceil_mode or (not m.count_include_pad and any(pad))) else math.prod(k)
        return math.sqrt(cov / smallest) * _ROUND
    return None


@register_lipschitz_bound(*(_AVG + _ADAPTIVE_AVG + _PADS + _COPY_PADS + _PERMUTATIONS + _UPSAMPLE))
def _nonneg_linear_l2(m: nn.Module, input_shape: Shape) -> float:
    _check_linear_args(m)
    if isinstance(m, nn.ChannelShuffle) or isinstance(m, _PERMUTATIONS):
        return 1.0
    if input_shape is None:
        b = _size_free_bound(m)
        if b is None:
            _needs_shape(m, input_shape, _dims(m))
        return b
    return _measured(m, input_shape)[0]


def _spatial_dims(m: nn.Module, input_shape: Sequence[int]) -> int:
    if isinstance(m, _UPSAMPLE):
        return len(input_shape) - 1  # (C, *spatial)
    return _dims(m)


def _measured(m: nn.Module, input_shape: Shape) -> Tuple[float, float]:
    shape = _needs_shape(m, input_shape, 1)
    d = _spatial_dims(m, shape)
    if len(shape) < d:
        raise UnboundedModuleError(f"{type(m).__name__}: input_shape {shape} has fewer than {d} spatial dimensions")
    return nonneg_linear_bound(m, shape, d)


@register_linf_lipschitz_bound(*(_AVG + _ADAPTIVE_AVG + _PADS + _COPY_PADS + _PERMUTATIONS + _UPSAMPLE))
def _nonneg_linear_linf(m: nn.Module, input_shape: Shape) -> float:
    _check_linear_args(m)
    if isinstance(m, _PERMUTATIONS + _PADS + _COPY_PADS):
        return 1.0  # every output is one input (or a constant)
    return _measured(m, input_shape)[1]


# ---- max-type pooling ------------------------------------------------------------------------
def _adaptive_coverage(n: int, o: int) -> int:
    counts = [0] * n
    for i in range(o):
        start, end = (i * n) // o, -((-(i + 1) * n) // o)
        for p in range(start, end):
            counts[p] += 1
    return max(counts) if counts else 1


def _max_cov(m: nn.Module, input_shape: Shape) -> int:
    if m.return_indices:
        raise UnboundedModuleError(f"{type(m).__name__} with return_indices=True does not return a tensor")
    d = _dims(m)
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        out = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * d
        if all(o == 1 for o in out):
            return 1
        if input_shape is None:  # an input lies in at most o windows per axis
            return math.prod(1 if o is None else o for o in out)
        spatial = _needs_shape(m, input_shape, d)[-d:]
        cov = 1
        for n, o in zip(spatial, out):
            cov *= 1 if o is None else _adaptive_coverage(n, o)
        return cov
    k = _tuple(m.kernel_size, d, "kernel_size", m)
    s = _tuple(m.stride if m.stride is not None else m.kernel_size, d, "stride", m)
    dil = _tuple(m.dilation, d, "dilation", m)
    pad = _tuple(m.padding, d, "padding", m)
    if any(pp > 0 and dd > 1 for pp, dd in zip(pad, dil)):
        # dilated taps can all land in the padding: such a window outputs -inf (not a finite function)
        spatial = _needs_shape(m, input_shape, d)[-d:]
        for n, kk, ss, pp, dd in zip(spatial, k, s, pad, dil):
            if _padding_only_window(n, kk, ss, pp, dd, m.ceil_mode):
                raise UnboundedModuleError(
                    f"{type(m).__name__}: at input size {tuple(spatial)} a window reads only padding (output -inf)")
    return _coverage(k, s, dil, m)


def _padding_only_window(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> bool:
    span = d * (k - 1) + 1
    size = n + 2 * p - span
    if size < 0:
        return False  # torch refuses the input itself
    out = (-(-size // s) if ceil_mode else size // s) + 1
    if ceil_mode and (out - 1) * s >= n + p:
        out -= 1
    return any(not any(0 <= i * s - p + j * d < n for j in range(k)) for i in range(out))


_MAX = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)


@register_lipschitz_bound(*_MAX)
def _max_l2(m: nn.Module, input_shape: Shape) -> float:
    return math.sqrt(_max_cov(m, input_shape))


@register_linf_lipschitz_bound(*_MAX)
def _max_linf(m: nn.Module, input_shape: Shape) -> float:
    _max_cov(m, input_shape)  # argument checks
    return 1.0


def _lp_p(m: nn.Module) -> float:
    p = m.norm_type
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p):
        raise UnboundedModuleError(f"{type(m).__name__}.norm_type = {p!r}")
    return float(p)


@register_lipschitz_bound(*_LP)
def _lp_l2(m: nn.Module, input_shape: Shape) -> float:
    p = _lp_p(m)
    if p == 1.0:  # window sums: a non-negative linear map
        if input_shape is None:
            d = _dims(m)
            k = _tuple(m.kernel_size, d, "kernel_size", m)
            s = _tuple(m.stride if m.stride is not None else m.kernel_size, d, "stride", m)
            cov, K = _coverage(k, s, (1,) * d, m), math.prod(k)
            # rows sum to K; coefficients are 1, or ≤ K for a partial window torch rescales (ceil_mode)
            return (K * math.sqrt(cov) if m.ceil_mode else math.sqrt(cov * K)) * _ROUND
        return _measured(m, input_shape)[0]
    if p >= 2 and p == int(p) and int(p) % 2 == 0 and not m.ceil_mode:
        d = _dims(m)
        k = _tuple(m.kernel_size, d, "kernel_size", m)
        s = _tuple(m.stride if m.stride is not None else m.kernel_size, d, "stride", m)
        return math.sqrt(_coverage(k, s, (1,) * d, m)) * _ROUND
    raise UnboundedModuleError(
        f"{type(m).__name__} with norm_type={m.norm_type}, ceil_mode={m.ceil_mode}: torch computes "
        "sign(Σx^p)·|Σx^p|^(1/p) (not Lipschitz for odd or fractional p) and rescales partial windows with "
        "ceil_mode; only p = 1, and even p without ceil_mode, are bounded")


@register_linf_lipschitz_bound(*_LP)
def _lp_linf(m: nn.Module, input_shape: Shape) -> float:
    p = _lp_p(m)
    if p == 1.0:
        return _measured(m, input_shape)[1]
    _lp_l2(m, input_shape)  # same argument checks
    d = _dims(m)
    return math.prod(_tuple(m.kernel_size, d, "kernel_size", m)) ** (1.0 / p) * _ROUND
