r"""GloRo: globally-robust training with a ⊥ logit (Leino, Wang & Fredrikson, ICML 2021).

A GloRo net appends to the C logits of f a (C+1)-th logit, the "bottom" class ⊥:

.. math::

    f_⊥(x) = \max_{j ≠ a} \big(f_j(x) + ε\, K_{aj}\big), \qquad a = \arg\max_i f_i(x),

where K_{aj} is a Lipschitz constant of f_a − f_j (L2): K_{aj} = L'·‖w_a − w_j‖₂ for a body
g with Lipschitz bound L' followed by a last linear layer with rows w_j, or the global
K_{aj} = √2·L for an L-Lipschitz logit map with no last layer given. Within the ball
‖δ‖₂ ≤ ε each difference moves by at most ε K_{aj}: (f_a − f_j)(x + δ) ≥ (f_a − f_j)(x) − ε K_{aj}, so

    ⊥ loses (f_a > f_⊥)   ⇔   min_{j≠a} (f_a − f_j)/K_{aj} > ε   ⇔   the margin certificate holds at ε.

At inference the argmax of the augmented logits (:func:`gloro_logits`) is ⊥ — abstain, "not
certified" — when the certified radius is < ε; :func:`gloro_predict` returns class C whenever the
radius is ≤ ε (a tie f_⊥ = f_a abstains too). Training is cross-entropy on the C+1 logits with the
true label y ∈ [0, C), so a sample has a small loss only when it is correct *and* certified
with room to spare. The gradient also reaches the
Lipschitz bound and the last-layer weights when they are tensors that require grad, as in
the paper (it keeps K small).

TRADES-style variant (the reference implementation's ``trades`` loss, weight ``lam``): with p = softmax(f) and
q = softmax(f, f_⊥),

.. math::

    \ell = \mathrm{CE}(f, y) + λ\, \mathrm{KL}\big([p, 0]\ \|\ q\big)
         = \mathrm{CE}(f, y) + λ\, \mathrm{softplus}\big(f_⊥ − \log\textstyle\sum_j e^{f_j}\big),

since q_j = p_j (1 − q_⊥) for j < C makes the KL equal to −log(1 − q_⊥).

Certificates computed here are exact-arithmetic statements about the logits given; a sound
certificate of a float network (rounding allowance, bounds from the eval weights) is the job
of :mod:`liplayers.certify`.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    LipschitzType,
    _check_logits,
    _check_reduction,
    _multiclass,
    _nonneg,
    _pair_constants,
    _reduce,
)
from ..utils import accepts_renamed_kwargs, renamed_attribute
from .schedules import EpsilonMixin

__all__ = ["GloRoLoss", "gloro_logits", "gloro_predict"]

_ANCHORS = ("prediction", "target")


def _bottom(input: Tensor, anchor: Tensor, eps: float, lipschitz: LipschitzType,
            last_weight: Optional[Tensor], who: str) -> Tensor:
    """(B,) ⊥ logit max_{j≠a} (f_j + ε K_aj) for anchor classes a."""
    K = _pair_constants(input, anchor, lipschitz, last_weight, who)
    lifted = (input + eps * K).scatter(1, anchor[:, None], float("-inf"))
    return lifted.amax(dim=1)


def gloro_logits(input: Tensor, lipschitz: LipschitzType, eps: float,
                 last_weight: Optional[Tensor] = None) -> Tensor:
    r"""The C+1 GloRo logits [f, f_⊥] with f_⊥ = max_{j≠a}(f_j + ε K_{aj}), a = argmax f.

    Args:
        input: logits f, shape (B, C), C ≥ 2.
        lipschitz: L2 Lipschitz bound — of the whole logit map when ``last_weight`` is None
            (K = √2·L), else of the body before the last layer (K_{aj} = L·‖w_a − w_j‖₂). A float,
            or a one-element tensor (gradients flow through it).
        eps: radius ε ≥ 0.
        last_weight: optional (C, d) last-layer weight, row j producing logit j.

    Returns:
        (B, C + 1) logits; column C is ⊥. ``argmax`` gives ⊥ when f_⊥ > f_a, i.e. when the
        certified radius min_j (f_a − f_j)/K_{aj} is < ε; use :func:`gloro_predict` to also
        abstain on the tie (radius exactly ε).

    Shape: (B, C) → (B, C + 1).
    """
    who = "gloro_logits"
    _check_logits(input, who)
    eps = _nonneg("eps", eps)
    anchor = input.detach().argmax(dim=1)
    return torch.cat([input, _bottom(input, anchor, eps, lipschitz, last_weight, who)[:, None]], dim=1)


def gloro_predict(input: Tensor, lipschitz: LipschitzType, eps: float,
                  last_weight: Optional[Tensor] = None) -> Tensor:
    """Predicted class in [0, C), or C (⊥: not certified at ε) where f_⊥ ≥ max f — ties abstain.

    Arguments as in :func:`gloro_logits`. Shape: (B, C) → (B,) int64.
    """
    with torch.no_grad():
        z = gloro_logits(input, lipschitz, eps, last_weight)
        C = input.shape[1]
        top, pred = z[:, :C].max(dim=1)
        return torch.where(z[:, C] >= top, torch.full_like(pred, C), pred)


class GloRoLoss(EpsilonMixin, nn.Module):
    r"""Cross-entropy on the GloRo logits [f, f_⊥] (Leino, Wang & Fredrikson, ICML 2021).

    Per sample (``lam=None``): ``loss = CE([f, f_⊥], y)``, y ∈ [0, C), the ⊥ class never a target;
    with a weight ``lam``: ``loss = CE(f, y) + lam·KL([softmax f, 0] ‖ softmax [f, f_⊥])
    = CE(f, y) + lam·softplus(f_⊥ − logsumexp f)`` (TRADES-style). See the module docstring for
    f_⊥ and K.

    Args:
        eps: training radius ε ≥ 0 (``set_eps`` changes it; see
            :class:`~liplayers.losses.schedules.EpsilonRamp`).
        lam: None for plain GloRo cross-entropy, or the weight ``lam ≥ 0`` of the TRADES-style
            loss.
        anchor: the class a the ⊥ logit is built against: ``"prediction"`` (default, the
            paper's: a = argmax f, the same logits as at inference) or ``"target"`` (a = y: the
            ⊥ logit then measures the robustness of the true class even while f misclassifies).
            Both agree on correctly classified samples.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    ``forward(input, target, lipschitz, last_weight=None)``: ``lipschitz`` and ``last_weight`` as
    in :func:`gloro_logits` (the bound of the logit map, or of the body with the last layer's
    weight).

    Shape:
        input (B, C) logits, C ≥ 2; target (B,) integer labels in [0, C);
        last_weight (C, d). Output: scalar, or (B,) with ``reduction="none"``.
    """

    @accepts_renamed_kwargs({"trades": "lam"})
    def __init__(self, eps: float, lam: Optional[float] = None, anchor: str = "prediction",
                 reduction: str = "mean") -> None:
        super().__init__()
        self.eps = _nonneg("eps", eps)
        self.lam = None if lam is None else _nonneg("lam", lam)
        if anchor not in _ANCHORS:
            raise ValueError(f"anchor must be one of {_ANCHORS}, got {anchor!r}")
        self.anchor = anchor
        self.reduction = _check_reduction(reduction)

    trades = renamed_attribute("trades", "lam")

    def augmented_logits(self, input: Tensor, target: Tensor, lipschitz: LipschitzType,
                         last_weight: Optional[Tensor] = None) -> Tensor:
        """The (B, C + 1) logits [f, f_⊥] this loss trains on (⊥ anchored as ``anchor`` says)."""
        return self._augmented(input, _multiclass(input, target, type(self).__name__), lipschitz, last_weight)

    def _augmented(self, input: Tensor, target: Tensor, lipschitz: LipschitzType,
                   last_weight: Optional[Tensor]) -> Tensor:
        anchor = input.detach().argmax(dim=1) if self.anchor == "prediction" else target
        bottom = _bottom(input, anchor, self.eps, lipschitz, last_weight, type(self).__name__)
        return torch.cat([input, bottom[:, None]], dim=1)

    def forward(self, input: Tensor, target: Tensor, lipschitz: LipschitzType,
                last_weight: Optional[Tensor] = None) -> Tensor:
        target = _multiclass(input, target, type(self).__name__)
        z = self._augmented(input, target, lipschitz, last_weight)
        if self.lam is None:
            per = F.cross_entropy(z, target, reduction="none")
        else:
            kl = F.softplus(z[:, -1] - torch.logsumexp(input, dim=1))
            per = F.cross_entropy(input, target, reduction="none") + self.lam * kl
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, lam={self.lam}, anchor={self.anchor!r}, reduction={self.reduction!r}"
