r"""Row normalization as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ._common import EvalCachedMap, compute_dtype

__all__ = ["RowNormalized", "row_normalized"]


def _normalize_rows(v: Tensor) -> Tensor:
    norms = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / norms.clamp_min(torch.finfo(v.dtype).tiny)


class RowNormalized(EvalCachedMap):
    r"""Parametrization ``w_i = v_i / ‖v_i‖₂``: every row of the weight has unit L2 norm.

    A zero row stays zero. Computed in float32 at least; in eval once per version of the
    stored parameter and cached. A matrix with unit rows is *not* 1-Lipschitz in general
    (its spectral norm lies between 1 and √rows); it is meant for a last layer certified by
    the pairwise rule ‖w_y − w_j‖ (Singla, Singla & Feizi, "Improved deterministic l2
    robustness on CIFAR-10 and CIFAR-100", ICLR 2022).
    """

    def _compute_eval(self, v: Tensor) -> Tensor:
        if not bool(torch.isfinite(v).all()):
            raise ValueError("RowNormalized: the weight contains non-finite values (NaN or Inf)")
        return _normalize_rows(v.to(torch.float64)).to(v.dtype)

    def forward(self, v: Tensor) -> Tensor:
        if v.dim() != 2:
            raise ValueError(f"RowNormalized expects a 2-D weight (out, in), got shape {tuple(v.shape)}")
        if not self.training:
            return self._eval_weight(v)
        return _normalize_rows(v.to(compute_dtype(v.dtype))).to(v.dtype)

    def right_inverse(self, w: Tensor) -> Tensor:
        return w


def row_normalized(module: nn.Module, name: str = "weight") -> nn.Module:
    """Register :class:`RowNormalized` on ``module.<name>`` (a 2-D weight); returns ``module``."""
    w = getattr(module, name, None)
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ValueError(f"row_normalized: module.{name} must be a 2-D tensor, got {type(w).__name__}")
    parametrize.register_parametrization(module, name, RowNormalized())
    return module
