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
* ``nn.ConvTranspose{1,2,3}d`` (zero padding, torch's only mode; any integer stride, padding,
  output padding, dilation, groups): the layer is a crop of the full transposed convolution,
  the adjoint of a zero-padded convolution with the same kernel
  (:mod:`liplayers.functional.conv_transpose`), bounded at the largest output padding a forward
  can use (``output_size`` reaches up to stride − 1). L2: 2-D — the bound of that convolution
  (FFT norm on a grid containing it, or the polyphase symbol bound without an input size); 1-D —
  the same with a 1×k kernel; 3-D — the coverage bound √cov·max_g ‖K_g‖₂. ∞→∞: the largest Σ |K|
  over the (input channel, tap) pairs that reach one output — exact at a known input size,
  else per output channel over the taps of one phase (a·d ≡ r mod s). Other padding modes,
  string padding and negative amounts are refused.

The legacy ``torch.nn.utils.spectral_norm`` hook recomputes the kernel in a pre-hook: modules with
hooks are refused unless the caller allows hooks; then the kernel the hook computes is used.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional.conv import conv2d_lipschitz_bound
from ..functional.conv_transpose import (conv_transpose1d_lipschitz_bound, conv_transpose2d_lipschitz_bound,
                                         conv_transpose_coverage_bound, conv_transpose_linf_bound)
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


# ---------------------------------------------------------------- transposed convolutions
def _int_tuple(m: nn.Module, name: str, n: int, lo: int) -> tuple:
    v = getattr(m, name)
    t = (v,) * n if isinstance(v, int) and not isinstance(v, bool) else v
    if (not isinstance(t, (tuple, list)) or len(t) != n
            or any(isinstance(x, bool) or not isinstance(x, int) or x < lo for x in t)):
        raise UnboundedModuleError(f"{type(m).__name__}.{name} = {v!r}: a bound is only proved for {n} integers "
                                   f">= {lo}")
    return tuple(t)


def _transposed_args(m: nn.modules.conv._ConvTransposeNd, n: int):
    """(kernel, stride, padding, output_padding, dilation, groups), read now; refuses what has no proof."""
    who = type(m).__name__
    if not m.transposed:
        raise UnboundedModuleError(f"{who}.transposed = {m.transposed!r}: the transposed-convolution bound does not "
                                   "describe it")
    if m.padding_mode != "zeros":
        raise UnboundedModuleError(f"{who}.padding_mode = {m.padding_mode!r}: only zero padding is bounded (and the "
                                   "only one torch runs for transposed convolutions)")
    if isinstance(m.padding, str):
        raise UnboundedModuleError(f"{who}.padding = {m.padding!r}: only integer padding is bounded")
    g = m.groups
    if isinstance(g, bool) or not isinstance(g, int) or g < 1:
        raise UnboundedModuleError(f"{who}.groups = {g!r}: a bound is only proved for integers >= 1")
    w = _conv_eval_weight(m)
    if w.dim() != n + 2 or w.is_complex() or w.shape[0] % g:
        raise UnboundedModuleError(f"{who}: kernel of shape {tuple(w.shape)} / dtype {w.dtype} with groups={g} is "
                                   f"not a real (in, out/groups, {n} sizes) kernel")
    return (w, _int_tuple(m, "stride", n, 1), _int_tuple(m, "padding", n, 0), _int_tuple(m, "output_padding", n, 0),
            _int_tuple(m, "dilation", n, 1), g)


@register_lipschitz_bound(nn.ConvTranspose1d)
def _conv_transpose1d_l2(m: nn.ConvTranspose1d, input_shape) -> float:
    w, s, p, o, d, g = _transposed_args(m, 1)
    return conv_transpose1d_lipschitz_bound(w, input_shape, s, p, o, d, g)


@register_lipschitz_bound(nn.ConvTranspose2d)
def _conv_transpose2d_l2(m: nn.ConvTranspose2d, input_shape) -> float:
    w, s, p, o, d, g = _transposed_args(m, 2)
    return conv_transpose2d_lipschitz_bound(w, input_shape, s, p, o, d, g)


@register_lipschitz_bound(nn.ConvTranspose3d)
def _conv_transpose3d_l2(m: nn.ConvTranspose3d, input_shape) -> float:
    w, s, _, _, d, g = _transposed_args(m, 3)  # the coverage bound holds for every padding and size
    return conv_transpose_coverage_bound(w, s, d, g)


def _conv_transpose_linf(n: int):
    def bound(m: nn.modules.conv._ConvTransposeNd, input_shape) -> float:
        w, s, p, o, d, g = _transposed_args(m, n)
        return conv_transpose_linf_bound(w, s, d, g, input_shape, p, o)

    return bound


for _n, _type in enumerate((nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d), 1):
    register_linf_lipschitz_bound(_type)(_conv_transpose_linf(_n))
