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

With ``input_shape`` the bounds are measured on the operator itself (Schur's test on the
non-negative linear map, :func:`liplayers.lipschitz.torch_pooling.nonneg_linear_bound`); without
it they are the worst case over sizes. Every argument is validated again when a bound is computed
(attributes can be changed after construction).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.conv import _pair, _spatial, window_multiplicity
from ..lipschitz import LipschitzModule, UnboundedModuleError, real_arg
from ..lipschitz.torch_pooling import nonneg_linear_bound

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


def _checked_args(m: nn.Module):
    """The pooling arguments of ``m`` as they are now, validated (UnboundedModuleError if invalid)."""
    try:
        return _pool_args(m.kernel_size, m.stride, m.padding)
    except (TypeError, ValueError) as exc:
        raise UnboundedModuleError(f"{type(m).__name__}: {exc}") from exc


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
        k, s, p = _checked_args(self)
        real_arg(self, "eps", lo=0.0)
        return _multiplicity_factor(_spatial(input_shape), k, s, p)

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
        k, s, p = _checked_args(self)
        scale = abs(real_arg(self, "scale"))
        if input_shape is None:
            m = [window_multiplicity(None, k[i], s[i]) for i in range(2)]
            # Schur per axis: columns sum to ≤ m/k, rows to ≤ 1 (zero padding counted in the divisor)
            return scale * math.sqrt(m[0] / k[0] * m[1] / k[1]) * _MARGIN
        l2, _ = nonneg_linear_bound(lambda x: F.avg_pool2d(x, k, s, p, count_include_pad=True), input_shape, 2)
        return scale * l2

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
        real_arg(self, "eps", lo=0.0)
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
