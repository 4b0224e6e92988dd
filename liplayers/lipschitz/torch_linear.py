r"""Bounds of plain ``torch.nn`` linear layers, reshaping modules, eval-mode identities and containers.

* ``nn.Linear``: L2, the exact spectral norm of the weight used (float64 SVD); ∞, the largest
  row L1 norm.
* ``nn.BatchNorm{1,2,3}d`` / ``nn.SyncBatchNorm`` in eval with running statistics: the affine map
  x ↦ γ(x − μ)/√(σ² + ε) + β, bound max |γ| / √(σ² + ε) (both norms). Without running statistics it
  normalizes by the statistics of the batch even in eval (it mixes samples): refused.
* ``nn.Identity``, dropout variants (the identity in eval), ``nn.Flatten`` / ``nn.Unflatten``
  (permutations of the coordinates of one sample: refused when their dimension is the batch's).
* ``nn.Sequential``: the product of its modules' bounds, input shapes propagated.
"""
from __future__ import annotations

import torch
from torch import nn

from ..functional.spectral import spectral_norm_exact
from .checks import feature_dim
from .l2 import L2_BOUNDS, register_both, register_lipschitz_bound
from .linf import LINF_BOUNDS, linf_operator_norm, register_linf_lipschitz_bound
from .protocol import UnboundedModuleError

__all__: list = []

_ROUND = 1.0 + 1e-9


def _finite_weight(m: nn.Module, w: torch.Tensor) -> torch.Tensor:
    w = w.detach()
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"{type(m).__name__}: the weight contains non-finite values (NaN or Inf)")
    return w


@register_lipschitz_bound(nn.Linear)
def _linear_l2(m: nn.Linear, input_shape) -> float:
    return float(spectral_norm_exact(_finite_weight(m, m.weight)))  # includes its rounding margin


@register_linf_lipschitz_bound(nn.Linear)
def _linear_linf(m: nn.Linear, input_shape) -> float:
    return linf_operator_norm(_finite_weight(m, m.weight))



@register_both(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
def _batchnorm(m: nn.modules.batchnorm._BatchNorm, input_shape) -> float:
    if not m.track_running_stats or m.running_var is None:
        raise UnboundedModuleError(
            f"{type(m).__name__} without running statistics normalizes by batch statistics even in "
            "eval mode: one sample's output depends on the others, no per-sample Lipschitz bound")
    with torch.no_grad():
        var = m.running_var.detach().to(torch.float64)
        scale = 1.0 / torch.sqrt(var + float(m.eps))
        if m.weight is not None:
            scale = scale * m.weight.detach().to(torch.float64)
        if not bool(torch.isfinite(scale).all()):
            raise ValueError(f"{type(m).__name__} has a non-finite scale (running_var + eps <= 0, or non-finite γ)")
        return float(scale.abs().max()) * _ROUND if scale.numel() else 0.0


@register_both(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
def _identity(m: nn.Module, input_shape) -> float:
    return 1.0  # dropout: the identity in eval mode, which is what a certificate is about


@register_both(nn.Flatten)
def _flatten(m: nn.Flatten, input_shape) -> float:
    feature_dim(m, m.start_dim, input_shape, "start_dim")
    return 1.0


@register_both(nn.Unflatten)
def _unflatten(m: nn.Unflatten, input_shape) -> float:
    if isinstance(m.dim, str):
        raise UnboundedModuleError("Unflatten with a named dimension has no registered bound")
    feature_dim(m, m.dim, input_shape)
    return 1.0


@register_lipschitz_bound(nn.Sequential)
def _sequential_l2(m: nn.Sequential, input_shape) -> float:
    return L2_BOUNDS.compose(list(m), input_shape)


@register_linf_lipschitz_bound(nn.Sequential)
def _sequential_linf(m: nn.Sequential, input_shape) -> float:
    return LINF_BOUNDS.compose(list(m), input_shape)
