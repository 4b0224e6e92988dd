r"""Bounds of plain ``torch.nn`` convolutions.

* ``nn.Conv2d``, L2: :func:`~liplayers.functional.conv.conv2d_lipschitz_bound` of the kernel used —
  the exact FFT norm for circular 'same' padding at a known input size, else the norm of the
  circular convolution on the padded grid (which contains the zero-padded map) times the norm of
  the padding operator (reflect / replicate copy pixels), or a size-independent symbol bound.
* ``nn.Conv1d`` / ``nn.Conv3d``, L2, zero padding: y = Σ_p e_p ⊗ K·patch_p(x), so
  ‖y‖² ≤ ‖K‖₂² Σ_p ‖patch_p(x)‖² ≤ cov ‖K‖₂² ‖x‖², with K the reshaped kernel of each group and
  cov the largest number of patches containing one input (per axis min(k, ⌊(k − 1)d/s⌋ + 1)).
  Other padding modes are refused.
* Every ``nn.Conv{1,2,3}d``, ∞→∞: each output is Σ K·(inputs of its window), so the bound is the
  largest Σ |K[o]| over output channels o (padding copies only add terms to that sum).

The legacy ``torch.nn.utils.spectral_norm`` hook recomputes the kernel in a pre-hook: modules with
hooks are refused unless the caller allows hooks; then the kernel the hook computes is used.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.conv import conv2d_lipschitz_bound
from ..functional.spectral import spectral_norm_exact
from .l2 import register_lipschitz_bound
from .linf import register_linf_lipschitz_bound
from .protocol import UnboundedModuleError
from .shapes import eval_mode

__all__: list = []

_ROUND = 1.0 + 1e-9


def _conv_eval_weight(m: nn.modules.conv._ConvNd) -> Tensor:
    """The kernel ``m`` uses in eval mode (parametrizations and the legacy spectral_norm hook)."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    with torch.no_grad(), eval_mode(m):
        w = None
        for hook in m._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm):
                w = hook.compute_weight(m, do_power_iteration=False)
        w = (m.weight if w is None else w).detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{type(m).__name__}: the kernel contains non-finite values (NaN or Inf)")
    return w


def _check_args(m: nn.modules.conv._ConvNd) -> None:
    if m.transposed:
        raise UnboundedModuleError(f"{type(m).__name__}: transposed convolutions have no registered bound")
    if isinstance(m.padding, str) and m.padding not in ("same", "valid"):
        raise UnboundedModuleError(f"{type(m).__name__}.padding = {m.padding!r}")


@register_lipschitz_bound(nn.Conv2d)
def _conv2d_l2(m: nn.Conv2d, input_shape) -> float:
    _check_args(m)
    return conv2d_lipschitz_bound(_conv_eval_weight(m), input_shape, m.stride, m.padding, m.dilation,
                                  m.padding_mode, m.groups)


@register_lipschitz_bound(nn.Conv1d, nn.Conv3d)
def _conv_nd_l2(m: nn.modules.conv._ConvNd, input_shape) -> float:
    _check_args(m)
    if m.padding_mode != "zeros":
        raise UnboundedModuleError(
            f"{type(m).__name__} with padding_mode={m.padding_mode!r}: only zero padding is bounded for 1-D and 3-D "
            "convolutions (the padding duplicates inputs)")
    w = _conv_eval_weight(m).to(torch.float64)
    g = m.groups
    blocks = w.reshape(g, w.shape[0] // g, -1)
    sigma = float(spectral_norm_exact(blocks).max())
    cov = 1
    for k, s, d in zip(m.kernel_size, m.stride, m.dilation):
        cov *= min(k, (k - 1) * d // s + 1)
    return math.sqrt(cov) * sigma * _ROUND


@register_linf_lipschitz_bound(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_linf(m: nn.modules.conv._ConvNd, input_shape) -> float:
    _check_args(m)
    w = _conv_eval_weight(m).to(torch.float64)
    return float(w.abs().reshape(w.shape[0], -1).sum(1).max()) * _ROUND if w.numel() else 0.0
