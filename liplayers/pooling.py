"""1-Lipschitz pooling and resampling, and guaranteed bounds for torch's pooling modules.

Facts used (per spatial axis; 2-D operators here are separable, so norms multiply):

* **Window multiplicity.** If every output reads one window and an input index lies in at
  most m windows (m = ⌈k/s⌉ for dilation 1), a map whose outputs are each 1-Lipschitz in
  their window (max, L2 norm of the window) is sqrt(m)-Lipschitz: Σ_windows ‖δ_w‖² ≤ m‖δ‖².
  Non-overlapping windows (s ≥ k): 1-Lipschitz. Tight for max pooling (a positive spike in
  m windows).
* **Average pooling** A (windows of k, stride s, all divisors k): by Schur's test on the
  non-negative AᵀA, ‖A‖² ≤ max_i Σ_{j∋i} Σ_{i'} A_ji A_ji' ≤ m·k/k² = m/k, with equality
  for s | k (constant input). So ``sqrt(k/m)·A`` is 1-Lipschitz (:class:`ScaledAvgPool2d`);
  for s = k the scale is sqrt(k), the familiar "multiply the mean by sqrt(window size)".
* **Pixel (un)shuffle** is a permutation of the entries: orthogonal.
* **Padding / nearest upsampling** copy entries: norm sqrt(max number of copies).

With ``input_shape`` the bounds of torch's average pools are exact (1-D operator matrices,
float64 SVD); without it they are the worst case over sizes.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .functional.conv import _pair, _spatial, padding_multiplicity, window_multiplicity
from .lipschitz import LipschitzModule, UnboundedModuleError, register_lipschitz_bound

__all__ = [
    "L2NormPool2d",
    "ScaledAvgPool2d",
    "GlobalL2Pool2d",
    "InvertibleDownsampling",
    "InvertibleUpsampling",
]

Size2 = Union[int, Tuple[int, int]]
_MARGIN = 1.0 + 1e-9


def _pool_args(kernel_size: Size2, stride: Optional[Size2], padding: Size2):
    k = _pair(kernel_size, "kernel_size")
    s = k if stride is None else _pair(stride, "stride")
    p = _pair(padding, "padding")
    if min(k) < 1 or min(s) < 1 or min(p) < 0:
        raise ValueError(f"kernel_size, stride must be >= 1 and padding >= 0, got {k}, {s}, {p}")
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(f"padding {p} must be at most half the kernel size {k}")
    return k, s, p


def _multiplicity_factor(hw, k, s, p, d=(1, 1), ceil_mode=False) -> float:
    f = 1.0
    for i in range(2):
        f *= math.sqrt(window_multiplicity(hw[i] if hw else None, k[i], s[i], p[i], d[i], ceil_mode))
    return f


class L2NormPool2d(LipschitzModule):
    r"""L2-norm pooling: y = sqrt(Σ_window x² + eps) per channel and window.

    Shapes: (B, C, H, W) → (B, C, H', W') as ``nn.AvgPool2d`` with the same arguments (zero
    padding). 1-Lipschitz for non-overlapping windows (stride ≥ kernel, the default),
    sqrt(m_h m_w) otherwise (module docstring). ``eps`` (default 1e-12) keeps the gradient
    finite at 0; x ↦ sqrt(‖x‖² + eps) is still 1-Lipschitz and differs from ‖x‖ by at most
    sqrt(eps).
    """

    def __init__(self, kernel_size: Size2, stride: Optional[Size2] = None, padding: Size2 = 0,
                 eps: float = 1e-12) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_args(kernel_size, stride, padding)
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        area = self.kernel_size[0] * self.kernel_size[1]
        s = F.avg_pool2d(x * x, self.kernel_size, self.stride, self.padding, count_include_pad=True) * area
        return torch.sqrt(s.clamp_min(0) + self.eps)

    def lipschitz_bound(self, input_shape=None) -> float:
        return _multiplicity_factor(_spatial(input_shape), self.kernel_size, self.stride, self.padding)

    def to_torch(self) -> nn.Module:
        """``nn.LPPool2d(2, ...)`` when unpadded (equal up to sqrt(eps)); else this module."""
        if self.padding == (0, 0):
            return nn.LPPool2d(2, self.kernel_size, self.stride)
        return self

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, eps={self.eps}"


class ScaledAvgPool2d(LipschitzModule):
    r"""Average pooling times sqrt(k_h/m_h · k_w/m_w): 1-Lipschitz (norm exactly 1 when s | k).

    Shapes as ``nn.AvgPool2d`` (zero padding counted in the divisor). m = ⌈k/s⌉ is the window
    multiplicity; for the default stride = kernel the scale is sqrt(k_h·k_w), i.e. the output
    is the window sum divided by sqrt(window size). Proof in the module docstring.
    """

    def __init__(self, kernel_size: Size2, stride: Optional[Size2] = None, padding: Size2 = 0) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.padding = _pool_args(kernel_size, stride, padding)
        m = [window_multiplicity(None, self.kernel_size[i], self.stride[i]) for i in range(2)]
        self.scale = math.sqrt(self.kernel_size[0] / m[0] * self.kernel_size[1] / m[1])

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True) * self.scale

    def lipschitz_bound(self, input_shape=None) -> float:
        hw = _spatial(input_shape)
        if hw is None:
            m = [window_multiplicity(None, self.kernel_size[i], self.stride[i]) for i in range(2)]
            return self.scale * math.sqrt(m[0] / self.kernel_size[0] * m[1] / self.kernel_size[1]) * _MARGIN
        a = [_avg_axis_matrix(hw[i], self.kernel_size[i], self.stride[i], self.padding[i], False, True)
             for i in range(2)]
        return self.scale * _norm(a[0]) * _norm(a[1]) * _MARGIN

    def to_torch(self) -> nn.Module:
        return self  # parameter-free, torch operations only

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, scale={self.scale:.6g}"


class GlobalL2Pool2d(LipschitzModule):
    r"""Global L2-norm pooling: (B, C, H, W) → (B, C), y_c = sqrt(Σ_{h,w} x_{c,h,w}² + eps).

    1-Lipschitz (a norm of disjoint groups of coordinates; see :class:`L2NormPool2d` for eps).
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        if not eps >= 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"GlobalL2Pool2d expects (B, C, H, W), got {tuple(x.shape)}")
        return torch.sqrt((x * x).sum(dim=(-2, -1)) + self.eps)

    def lipschitz_bound(self, input_shape=None) -> float:
        return 1.0

    def to_torch(self) -> nn.Module:
        return self


class InvertibleDownsampling(nn.PixelUnshuffle, LipschitzModule):
    """Pixel unshuffle (B, C, H, W) → (B, C·r², H/r, W/r): a permutation, hence orthogonal."""

    def lipschitz_bound(self, input_shape=None) -> float:
        return 1.0

    def to_torch(self) -> nn.Module:
        return nn.PixelUnshuffle(self.downscale_factor)


class InvertibleUpsampling(nn.PixelShuffle, LipschitzModule):
    """Pixel shuffle (B, C·r², H, W) → (B, C, H·r, W·r): a permutation, hence orthogonal."""

    def lipschitz_bound(self, input_shape=None) -> float:
        return 1.0

    def to_torch(self) -> nn.Module:
        return nn.PixelShuffle(self.upscale_factor)


# ---- exact 1-D operators --------------------------------------------------------------------------
def _norm(a: Tensor) -> float:
    return float(torch.linalg.matrix_norm(a, ord=2)) if a.numel() else 0.0


def _avg_axis_matrix(n: int, k: int, s: int, p: int, ceil_mode: bool, count_include_pad: bool,
                     divisor_override: Optional[int] = None) -> Tensor:
    """The (out × n) matrix of torch's average pooling along one axis (float64).

    torch divides a 2-D window sum by a product of per-axis counts, so the 2-D operator is the
    Kronecker product of these matrices (with ``divisor_override`` pass 1 and divide by it).
    """
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
    y = F.avg_pool2d(eye, (k, 1), (s, 1), (p, 0), ceil_mode, count_include_pad, divisor_override)
    return y[:, 0, :, 0].T


@register_lipschitz_bound(nn.AvgPool2d)
def _avgpool_bound(m: nn.AvgPool2d, input_shape) -> float:
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = _pair(m.padding)
    hw = _spatial(input_shape)
    div = m.divisor_override
    if hw is not None:
        if div:
            a = [_avg_axis_matrix(hw[i], k[i], s[i], p[i], m.ceil_mode, True, 1) for i in range(2)]
            return _norm(a[0]) * _norm(a[1]) / div * _MARGIN
        a = [_avg_axis_matrix(hw[i], k[i], s[i], p[i], m.ceil_mode, m.count_include_pad) for i in range(2)]
        return _norm(a[0]) * _norm(a[1]) * _MARGIN
    # Schur bound per axis: ‖A‖² ≤ m · max_j (valid entries of window j) / c_j²
    bound = 1.0
    for i in range(2):
        mult = window_multiplicity(None, k[i], s[i])
        if m.ceil_mode or (not m.count_include_pad and p[i] > 0):
            c_min = 1 if m.ceil_mode else k[i] - p[i]
            bound *= math.sqrt(mult / c_min)
        else:
            bound *= math.sqrt(mult / k[i])
    if div:
        # sums divided by div: per-axis Schur bound sqrt(m·k) for the sum, then 1/div overall
        bound = math.prod(math.sqrt(window_multiplicity(None, k[i], s[i]) * k[i]) for i in range(2)) / div
    return bound * _MARGIN


@register_lipschitz_bound(nn.AdaptiveAvgPool2d)
def _adaptive_avg_bound(m: nn.AdaptiveAvgPool2d, input_shape) -> float:
    hw = _spatial(input_shape)
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    bound = 1.0
    for i in range(2):
        o = out[i]
        if hw is None:
            bound *= 1.0 if o is None else math.sqrt(o)  # Σ_{j∋i} 1/c_j ≤ number of windows
            continue
        n = hw[i]
        if o is None or o == n:
            continue
        eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
        a = F.adaptive_avg_pool2d(eye, (o, 1))[:, 0, :, 0].T
        bound *= _norm(a)
    return bound * _MARGIN


def _max_like_bound(k, s, p, d, ceil_mode, input_shape) -> float:
    return _multiplicity_factor(_spatial(input_shape), k, s, p, d, ceil_mode)


@register_lipschitz_bound(nn.MaxPool2d)
def _maxpool_bound(m: nn.MaxPool2d, input_shape) -> float:
    """sqrt of the largest number of windows sharing a pixel (1 for non-overlapping windows)."""
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    return _max_like_bound(k, s, _pair(m.padding), _pair(m.dilation), m.ceil_mode, input_shape)


@register_lipschitz_bound(nn.AdaptiveMaxPool2d)
def _adaptive_max_bound(m: nn.AdaptiveMaxPool2d, input_shape) -> float:
    hw = _spatial(input_shape)
    out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    bound = 1.0
    for i in range(2):
        o = out[i]
        if o is None or (hw is not None and o == hw[i]):
            continue
        if hw is None:
            bound *= math.sqrt(o)
            continue
        n = hw[i]
        cnt = torch.zeros(n)
        for j in range(o):
            start, end = (j * n) // o, -(-((j + 1) * n) // o)
            cnt[start:end] += 1
        bound *= math.sqrt(float(cnt.max()))
    return bound


@register_lipschitz_bound(nn.LPPool2d)
def _lppool_bound(m: nn.LPPool2d, input_shape) -> float:
    """p = 1: window sums (Schur: sqrt(m·k) per axis); even p ≥ 2: window ℓp norms (≤ ℓ2)."""
    k = _pair(m.kernel_size)
    s = _pair(m.stride if m.stride is not None else m.kernel_size)
    p = float(m.norm_type)
    hw = _spatial(input_shape)
    if p == 1.0:
        if hw is not None:
            a = [_avg_axis_matrix(hw[i], k[i], s[i], 0, m.ceil_mode, True, 1) for i in range(2)]
            return _norm(a[0]) * _norm(a[1]) * _MARGIN
        return math.prod(math.sqrt(window_multiplicity(None, k[i], s[i]) * k[i]) for i in range(2)) * _MARGIN
    if p >= 2 and p == int(p) and int(p) % 2 == 0:
        return _max_like_bound(k, s, (0, 0), (1, 1), m.ceil_mode, input_shape)
    raise UnboundedModuleError(
        f"LPPool2d with norm_type={m.norm_type}: torch computes sign(Σx^p)·|Σx^p|^(1/p), which is not "
        "Lipschitz for odd or fractional p; only p = 1 and even p are bounded")


@register_lipschitz_bound(nn.PixelShuffle, nn.PixelUnshuffle, nn.ZeroPad2d, nn.ConstantPad2d)
def _permutation_bound(m: nn.Module, input_shape) -> float:
    """Permutations (pixel shuffle) and zero/constant padding (an isometric embedding + constant)."""
    return 1.0


@register_lipschitz_bound(nn.ReflectionPad2d, nn.ReplicationPad2d, nn.CircularPad2d)
def _copy_pad_bound(m: nn.Module, input_shape) -> float:
    """sqrt of the largest number of copies of one pixel in the padded image (per axis)."""
    left, right, top, bottom = m.padding
    mode = {nn.ReflectionPad2d: "reflect", nn.ReplicationPad2d: "replicate", nn.CircularPad2d: "circular"}
    kind = next(v for t, v in mode.items() if isinstance(m, t))
    hw = _spatial(input_shape)
    return math.sqrt(padding_multiplicity(hw[0] if hw else None, top, bottom, kind)
                     * padding_multiplicity(hw[1] if hw else None, left, right, kind))


@register_lipschitz_bound(nn.Upsample, nn.UpsamplingNearest2d)
def _upsample_bound(m: nn.Upsample, input_shape) -> float:
    """Nearest upsampling copies each pixel at most ⌈scale⌉ times per axis."""
    if m.mode != "nearest":
        raise UnboundedModuleError(f"Upsample mode {m.mode!r} has no registered bound (only 'nearest')")
    hw = _spatial(input_shape)
    if m.scale_factor is not None:
        sf = m.scale_factor if isinstance(m.scale_factor, tuple) else (m.scale_factor,) * 2
        return math.sqrt(math.ceil(float(sf[0])) * math.ceil(float(sf[-1])))
    if hw is None:
        raise UnboundedModuleError("Upsample(size=...) needs input_shape for a bound")
    size = m.size if isinstance(m.size, tuple) else (m.size, m.size)
    return math.sqrt(math.ceil(size[0] / hw[0]) * math.ceil(size[-1] / hw[1]))
