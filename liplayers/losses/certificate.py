r"""Losses built on the margin certificate of a Lipschitz classifier.

For logits f, label y and Lipschitz constants K_{yj} of the differences f_y − f_j (L2;
K_{yj} = √2·L for an L-Lipschitz logit map, or L'·‖w_y − w_j‖₂ for an L'-Lipschitz body and
last-layer rows w_j), the certified radius of the true class is

.. math::

    r(x, y) = \min_{j ≠ y} \frac{f_y(x) − f_j(x)}{K_{yj}}
            \;\Big(= \frac{f_y − \max_{j≠y} f_j}{\sqrt2\, L} \text{ with the global constant}\Big),

positive iff f_y is the strict maximum, and then no perturbation of L2 norm < r changes the class.

===================================  ==============================================================
class                                per-sample loss
===================================  ==============================================================
:class:`CertificateRegularizedLoss`  CE(f, y) − lam·relu(r), optionally capped  (Singla et al., 2022)
:class:`EMMALoss`                    CE(f̃, y), f̃_j = f_j + ε_j K_{yj}       (Hu et al., 2023)
:class:`LogitAnnealingLoss`          −T (1 − p_t)^β log p_t                  (Lai et al., 2025)
===================================  ==============================================================

``forward(input, target, lipschitz, last_weight=None)`` for all three: ``lipschitz`` is the
bound of the logit map (global constant) or, with ``last_weight`` (C, d), of the body before the
last layer; a float or a one-element tensor (gradients flow through tensors, and through
``last_weight``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import (
    LipschitzType,
    _check_reduction,
    _multiclass,
    _nonneg,
    _pair_constants,
    _positive,
    _reduce,
)
from ..utils import accepts_renamed_kwargs, renamed_attribute
from .schedules import EpsilonMixin

__all__ = ["CertificateRegularizedLoss", "EMMALoss", "LogitAnnealingLoss", "certified_radius_of_target"]


def _fraction(name: str, value: float) -> float:
    value = _nonneg(name, value)
    if value > 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return value


def certified_radius_of_target(input: Tensor, target: Tensor, lipschitz: LipschitzType,
                               last_weight: Optional[Tensor] = None) -> Tensor:
    r"""Differentiable r = min_{j≠y} (f_y − f_j)/K_{yj} per sample (≤ 0 unless y is the strict top class).

    A pair with K_{yj} = 0 (identical last-layer rows) can never swap: it contributes +∞ when
    f_y > f_j, −∞ when f_y < f_j and 0 on a tie. Exact-arithmetic value of the logits given (no
    rounding allowance: use :mod:`liplayers.certify` for a sound certificate of a network).

    Shape: input (B, C), target (B,) → (B,).
    """
    who = "certified_radius_of_target"
    target = _multiclass(input, target, who)
    return _radius(input, target, _pair_constants(input, target, lipschitz, last_weight, who))


def _radius(input: Tensor, target: Tensor, K: Tensor) -> Tensor:
    m = input.gather(1, target[:, None]) - input  # (B, C) margins f_y - f_j
    pos = K > 0
    ratio = m / torch.where(pos, K, torch.ones_like(K))  # safe denominator: finite gradients everywhere
    degenerate = torch.where(m > 0, math.inf, torch.where(m < 0, -math.inf, 0.0)).to(m.dtype)
    ratio = torch.where(pos, ratio, degenerate)
    return ratio.scatter(1, target[:, None], math.inf).amin(dim=1)


def _emma_lift(input: Tensor, target: Tensor, K: Tensor, eps: float, min_fraction: float) -> Tensor:
    """f̃_j = f_j + ε_j K_yj with ε_j = stopgrad(clip((f_y − f_j)/K_yj, min_fraction·ε, ε)); f̃_y = f_y."""
    if eps == 0.0:
        return input
    m = (input.gather(1, target[:, None]) - input).detach()
    scale = (eps * K.detach()).clamp_min(torch.finfo(input.dtype).tiny)
    frac = (m / scale).clamp(min_fraction, 1.0)  # detached; K_yy = 0 leaves f_y unchanged
    return input + frac * eps * K


class CertificateRegularizedLoss(nn.Module):
    r"""``loss = CE(f, y) − lam·relu(r)``, r the certified radius of the true class (Singla, Singla & Feizi, ICLR 2022).

    The certificate regularizer (CR) rewards the radius r = min_{j≠y} (f_y − f_j)/K_{yj}
    (= (f_y − max_{j≠y} f_j)/(√2 L) with the global constant), on correctly classified samples
    only (relu). The weight ``lam`` (the paper's γ) trades clean accuracy for larger certified radii.

    ``threshold`` (optional, r_max > 0) caps the reward, −lam·min(relu(r), r_max), so samples already
    certified at r_max stop pulling the model (a bounded objective; the reference code has no
    cap — ``threshold=None`` is the paper's loss). With a last layer that has two identical rows
    the radius can be +∞ (that pair never swaps); the cap then keeps the loss finite.

    Args:
        lam: weight ``lam ≥ 0`` of the radius reward (the paper's γ).
        threshold: None or r_max > 0, in input units.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        input (B, C), target (B,) integer labels in [0, C), last_weight (C, d).
        Output: scalar, or (B,) with ``reduction="none"``.
    """

    @accepts_renamed_kwargs({"gamma": "lam"})
    def __init__(self, lam: float = 0.5, threshold: Optional[float] = None, reduction: str = "mean") -> None:
        super().__init__()
        self.lam = _nonneg("lam", lam)
        if threshold is not None:
            threshold = _nonneg("threshold", threshold)
            if threshold == 0.0:
                raise ValueError("threshold must be > 0 or None (a zero cap removes the regularizer)")
        self.threshold = threshold
        self.reduction = _check_reduction(reduction)

    gamma = renamed_attribute("gamma", "lam")

    def forward(self, input: Tensor, target: Tensor, lipschitz: LipschitzType,
                last_weight: Optional[Tensor] = None) -> Tensor:
        who = type(self).__name__
        target = _multiclass(input, target, who)
        radius = F.relu(_radius(input, target, _pair_constants(input, target, lipschitz, last_weight, who)))
        if self.threshold is not None:
            radius = radius.clamp_max(self.threshold)
        per = F.cross_entropy(input, target, reduction="none") - self.lam * radius
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"lam={self.lam}, threshold={self.threshold}, reduction={self.reduction!r}"


class EMMALoss(EpsilonMixin, nn.Module):
    r"""Efficient margin maximization (EMMA; Hu, Zou, Wang, Leino & Fredrikson, NeurIPS 2023).

    Every non-target logit is raised by the largest amount an ε-perturbation could add to it,
    but no further than a tie with the true logit:

    .. math::

        \tilde f_j = f_j + ε_j K_{yj}, \qquad
        ε_j = \operatorname{sg}\Big(\operatorname{clip}\big(\tfrac{f_y − f_j}{K_{yj}},\; ρ ε,\; ε\big)\Big),
        \qquad \tilde f_y = f_y, \qquad \ell = \mathrm{CE}(\tilde f, y),

    sg = stop-gradient. A class j that is already certified against y at ε (f_y − f_j ≥ ε K_{yj})
    gets the full worst case ε K_{yj}; an uncertified one is lifted to a tie with f_y (so its
    gradient is as if f_j were the top logit); a class that beats y, or trails it by less than
    ρ·ε·K_{yj}, gets the floor ρ·ε·K_{yj} (ρ = ``min_fraction``, 0.01 as in the authors'
    implementation). Only ε_j is a
    constant: K_{yj} keeps its gradient when ``lipschitz`` or ``last_weight`` require grad, as in
    the authors' implementation — pass detached values for a loss that leaves K alone. Unlike
    GloRo it penalizes all non-target classes at once, each by its own pairwise constant.

    Args:
        eps: ε ≥ 0 (``set_eps`` changes it); ε = 0 gives plain cross-entropy.
        min_fraction: ρ ∈ [0, 1].
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        input (B, C), target (B,) integer labels in [0, C), last_weight (C, d).
        Output: scalar, or (B,) with ``reduction="none"``.
    """

    def __init__(self, eps: float, min_fraction: float = 0.01, reduction: str = "mean") -> None:
        super().__init__()
        self.eps = _nonneg("eps", eps)
        self.min_fraction = _fraction("min_fraction", min_fraction)
        self.reduction = _check_reduction(reduction)

    def lifted_logits(self, input: Tensor, target: Tensor, lipschitz: LipschitzType,
                      last_weight: Optional[Tensor] = None) -> Tensor:
        """The (B, C) logits f̃ the cross-entropy is taken on."""
        return self._lift(input, _multiclass(input, target, type(self).__name__), lipschitz, last_weight)

    def _lift(self, input: Tensor, target: Tensor, lipschitz: LipschitzType, last_weight: Optional[Tensor]) -> Tensor:
        K = _pair_constants(input, target, lipschitz, last_weight, type(self).__name__)
        return _emma_lift(input, target, K, self.eps, self.min_fraction)

    def forward(self, input: Tensor, target: Tensor, lipschitz: LipschitzType,
                last_weight: Optional[Tensor] = None) -> Tensor:
        target = _multiclass(input, target, type(self).__name__)
        lifted = self._lift(input, target, lipschitz, last_weight)
        return _reduce(F.cross_entropy(lifted, target, reduction="none"), self.reduction)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, min_fraction={self.min_fraction}, reduction={self.reduction!r}"


class LogitAnnealingLoss(EpsilonMixin, nn.Module):
    r"""Logit annealing loss (LA; Lai, Huang, Kung & Chen, ICML 2025 — BRONet).

    .. math::

        \ell(z, y) = −T\,(1 − p_t)^{β} \log p_t, \qquad
        p_t = \operatorname{softmax}\!\Big(\frac{z − ξ\, e_y}{T}\Big)_y ,

    i.e. T·(1 − p_t)^β·CE((z − ξ e_y)/T, y): the offset cross-entropy (offset ξ, temperature T)
    multiplied by a focal-type annealing factor. As the margin of a sample grows, p_t → 1 and
    the factor anneals its loss and gradient to zero, so the limited capacity of a Lipschitz
    network is spent on samples with small margins instead of inflating large ones (Lai et al.
    contrast this with the unbounded, discontinuous reward of certificate regularization).
    β = 0 is the offset cross-entropy.

    With ``eps > 0`` the logits z are first lifted as in :class:`EMMALoss` (BRONet's default
    training loss, where LA is applied to the EMMA logits); then ``forward`` needs ``lipschitz``.
    Defaults ξ = 2, T = 0.75, β = 5 are the BRONet reference configuration.

    Args:
        offset: ξ ≥ 0.  temperature: T > 0.  beta: β ≥ 0.
        eps: ε ≥ 0 for the EMMA lift (0: none); ``set_eps`` changes it.
        min_fraction: ρ of the EMMA lift.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        input (B, C), target (B,) integer labels in [0, C), last_weight (C, d).
        Output: scalar, or (B,) with ``reduction="none"``.
    """

    def __init__(self, offset: float = 2.0, temperature: float = 0.75, beta: float = 5.0, eps: float = 0.0,
                 min_fraction: float = 0.01, reduction: str = "mean") -> None:
        super().__init__()
        self.offset = _nonneg("offset", offset)
        self.temperature = _positive("temperature", temperature)
        self.beta = _nonneg("beta", beta)
        self.eps = _nonneg("eps", eps)
        self.min_fraction = _fraction("min_fraction", min_fraction)
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor, lipschitz: Optional[LipschitzType] = None,
                last_weight: Optional[Tensor] = None) -> Tensor:
        who = type(self).__name__
        target = _multiclass(input, target, who)
        z = input
        if self.eps > 0.0:
            if lipschitz is None:
                raise ValueError(f"{who}: eps > 0 lifts the logits as EMMA does and needs lipschitz")
            K = _pair_constants(input, target, lipschitz, last_weight, who)
            z = _emma_lift(input, target, K, self.eps, self.min_fraction)
        elif last_weight is not None:
            raise ValueError(f"{who}: last_weight is only used with eps > 0")
        shifted = (z - self.offset * F.one_hot(target, z.shape[1]).to(z.dtype)) / self.temperature
        ce = F.cross_entropy(shifted, target, reduction="none")  # −log p_t
        one_minus_pt = (-torch.expm1(-ce)).clamp_min(torch.finfo(ce.dtype).tiny)  # accurate for p_t → 1
        per = self.temperature * one_minus_pt.pow(self.beta) * ce
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return (f"offset={self.offset}, temperature={self.temperature}, beta={self.beta}, eps={self.eps}, "
                f"reduction={self.reduction!r}")
