r"""Offset cross-entropy for Lipschitz classifiers (Prach & Lampert, ECCV 2022; Prach et al., 2023).

Per sample, with logits f ∈ ℝ^C, label y, offset u ≥ 0 and temperature τ > 0:

.. math::

    \ell(f, y) = τ \cdot \mathrm{CE}\!\left(\frac{f − u\, e_y}{τ},\, y\right)
              = τ \log \sum_j \exp\!\frac{f_j − f_y + u\,[j ≠ y]}{τ}.

The true logit is handicapped by u before the softmax, so the loss keeps pushing until the
margin f_y − max_{j≠y} f_j clears u by a few τ. As τ → 0 the loss tends to the hinge
max(0, u − (f_y − max_{j≠y} f_j)) (a margin of u is then free of loss); the factor τ in front
keeps the gradient, softmax((f − u e_y)/τ) − e_y, of size O(1) for every τ.

Why 2√2·ε·L. For an L-Lipschitz (L2) logit map each difference f_y − f_j is √2·L-Lipschitz
(‖e_y − e_j‖₂ = √2), so a margin m certifies the radius m/(√2·L); the margin that certifies
radius r is √2·L·r. Prach et al. (2023, "1-Lipschitz layers compared") train for twice the
radius they evaluate, r = 2ε, hence u = 2√2·ε·L with τ = 1/4 — :meth:`OffsetCrossEntropyLoss.for_radius`
(for ε = 36/255 and L = 1 that is u ≈ 0.3993).
"""
from __future__ import annotations

import math
from typing import Optional

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _check_reduction, _multiclass, _nonneg, _positive, _reduce
from .schedules import EpsilonMixin

__all__ = ["OffsetCrossEntropyLoss"]


class OffsetCrossEntropyLoss(EpsilonMixin, nn.Module):
    r"""τ·CE((f − u·e_y)/τ, y): cross-entropy with the true logit lowered by an offset u.

    Prach & Lampert (ECCV 2022) introduced it to train AOL networks; Prach et al. (2023) use
    u = 2√2·ε·L and τ = 1/4 (see :meth:`for_radius`). Defaults u = √2, τ = 1/4 are the
    reference implementation's (a margin of √2 certifies radius 1 for L = 1).

    Gradient in f: softmax((f − u e_y)/τ) − e_y, so the true logit is always pushed up and
    every other logit down (strictly, for finite logits).

    Args:
        offset: u ≥ 0, in logit units.
        temperature: τ > 0.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.

    Shape:
        input (B, C) floating logits with C ≥ 2; target (B,) integer labels in [0, C).
        Output: scalar, or (B,) with ``reduction="none"``.

    ``set_eps(eps)`` is available on a loss built by :meth:`for_radius`: it resets the offset to
    2√2·eps·L for the stored L (an :class:`~liplayers.losses.schedules.EpsilonRamp` can drive it).
    """

    def __init__(self, offset: float = math.sqrt(2.0), temperature: float = 0.25, reduction: str = "mean") -> None:
        super().__init__()
        self.offset = _nonneg("offset", offset)
        self.temperature = _positive("temperature", temperature)
        self.reduction = _check_reduction(reduction)
        self.eps: Optional[float] = None
        self.lipschitz: Optional[float] = None

    @classmethod
    def for_radius(cls, eps: float, lipschitz: float = 1.0, temperature: float = 0.25,
                   reduction: str = "mean") -> "OffsetCrossEntropyLoss":
        r"""The loss of Prach et al. (2023) for a target radius ε: u = 2√2·ε·L, τ = 1/4.

        √2·L·r is the margin that certifies radius r for an L-Lipschitz logit map (pairwise
        certificate r = margin/(√2·L)); the factor 2 trains for r = 2ε.
        """
        eps = _nonneg("eps", eps)
        lipschitz = _positive("lipschitz", lipschitz)
        loss = cls(offset=2.0 * math.sqrt(2.0) * eps * lipschitz, temperature=temperature, reduction=reduction)
        loss.eps, loss.lipschitz = eps, lipschitz
        return loss

    def set_eps(self, eps: float) -> None:
        if self.lipschitz is None:
            raise ValueError("OffsetCrossEntropyLoss: set_eps needs a loss built with "
                             "OffsetCrossEntropyLoss.for_radius(eps, lipschitz); set .offset directly otherwise")
        super().set_eps(eps)
        self.offset = 2.0 * math.sqrt(2.0) * self.eps * self.lipschitz

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target = _multiclass(input, target, type(self).__name__)
        shifted = input - self.offset * F.one_hot(target, input.shape[1]).to(input.dtype)
        per = self.temperature * F.cross_entropy(shifted / self.temperature, target, reduction="none")
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"offset={self.offset:.6g}, temperature={self.temperature}, reduction={self.reduction!r}"
