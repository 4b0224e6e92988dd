r"""Last-layer normalization: a linear head with unit-norm rows."""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from ..parametrizations.row_normalized import RowNormalized
from .linear import _ParametrizedLinear, _check_features

__all__ = ["LastLayerNormalizedLinear"]


class LastLayerNormalizedLinear(_ParametrizedLinear):
    r"""Linear head with unit-norm rows: y_j = ⟨w_j, x⟩ + b_j, w_j = v_j / ‖v_j‖₂.

    Meant as the last layer of a 1-Lipschitz body: all logits live on the same scale, which
    helps with many classes (Singla, Singla & Feizi, "Improved deterministic l2 robustness on
    CIFAR-10 and CIFAR-100", ICLR 2022).

    **It is not a 1-Lipschitz layer.** The spectral norm of a matrix with unit rows lies
    between 1 and √out_features, so :meth:`lipschitz_bound` returns the exact spectral norm of
    the weight used (float64 SVD), never 1. What the head is for is the pairwise certificate:
    for the predicted class y and a body with Lipschitz bound L', the margin y_y − y_j changes
    by at most ‖w_y − w_j‖ L' per unit of input, so the certified radius is
    min_{j≠y} (y_y − y_j) / (‖w_y − w_j‖ L'), with ‖w_y − w_j‖ ≤ 2 (and √2 for orthogonal
    rows). :meth:`row_difference_norms` gives these norms; a certificate must use them (or
    the spectral norm), never a product bound that assumes 1.

    Args:
        in_features, out_features, bias, device, dtype: as ``nn.Linear``.

    Shape:
        - Input: (*, in_features)
        - Output: (*, out_features)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        _check_features("LastLayerNormalizedLinear", in_features, out_features)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        parametrize.register_parametrization(self, "weight", RowNormalized())

    def row_difference_norms(self) -> Tensor:
        """(out, out) float64 matrix of ‖w_i − w_j‖₂ for the eval-mode weight, times 1 + 1e-9.

        Entry (y, j) is the Lipschitz constant of the logit difference y_y − y_j w.r.t. the
        head's input (exact up to the margin).
        """
        w = self.eval_weight().to(torch.float64)
        return torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist") * (1.0 + 1e-9)
