r"""Margin and temperature losses for Lipschitz (GNP) classifiers.

References: Anil, Lucas & Grosse, "Sorting out Lipschitz function approximation", ICML 2019;
Béthune et al., "Pay attention to your loss: understanding misconceptions about 1-Lipschitz
neural networks", NeurIPS 2022; Serrurier et al., CVPR 2021 (hinge-KR).

A 1-Lipschitz logit map f is certified at x with radius (f_y − max_{j≠y} f_j)/(√2·L) (multiclass)
or |f(x)|/L (single logit); these losses ask for a *margin* in logit units, which is a margin in
input units once divided by the Lipschitz constant. Conventions (all classes):

* ``input``: logits, ``(B, C)`` for multiclass losses, ``(B,)`` or ``(B, 1)`` for binary ones.
* ``target``: multiclass — integer class indices ``(B,)`` in ``[0, C)``; binary — ``(B,)`` or
  ``(B, 1)`` labels in {0, 1} or {−1, +1} (any dtype; ``target > 0`` is the positive class).
* ``reduction``: ``"mean"`` (default), ``"sum"`` or ``"none"`` (per-sample values ``(B,)``).

==============================  ===============================================================
class                           per-sample loss
==============================  ===============================================================
:class:`HingeMarginLoss`        Σ_{j≠y} max(0, κ − (f_y − f_j))  (Anil et al. 2019)
                                or max over j≠y (``aggregate="max"``, Crammer–Singer)
:class:`BinaryHingeLoss`        max(0, κ − y·f),  y ∈ {−1, +1}
:class:`KRLoss`                 −(Kantorovich–Rubinstein estimate of W₁ between the classes)
:class:`HKRLoss`                α·hinge + KR (Serrurier et al. 2021)
:class:`TauCrossEntropyLoss`    CE(τ·f, y)          (Béthune et al. 2022)
:class:`TauBCEWithLogitsLoss`   −log σ(τ·y·f)       (Béthune et al. 2022)
==============================  ===============================================================

Temperature (Béthune et al. 2022, "Pay attention to your loss"): for a 1-Lipschitz f, τ — not the
architecture — sets the accuracy/robustness trade-off: τ → ∞ maximizes accuracy (CE(τf)/τ →
the margin-0 hinge max(0, max_{j≠y} f_j − f_y)), τ → 0 maximizes the mean certifiable robustness
(CE(τf) → log C with gradient τ(1/C − e_y)). ``divide_by_tau=True`` returns CE(τ·f, y)/τ
(deel-lip's convention), whose gradient in f, softmax(τf) − e_y, is bounded independently of τ.
All use ``log_softmax`` / ``softplus`` forms: finite for any finite logits and any τ > 0.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _check_reduction, _multiclass, _nonneg, _positive, _reduce

__all__ = [
    "HingeMarginLoss",
    "BinaryHingeLoss",
    "KRLoss",
    "HKRLoss",
    "TauCrossEntropyLoss",
    "TauBCEWithLogitsLoss",
]

def _is_binary(input: Tensor) -> bool:
    return input.dim() == 1 or (input.dim() == 2 and input.shape[1] == 1)


def _binary(input: Tensor, target: Tensor, who: str):
    """Validate a single logit ``(B,)``/``(B, 1)`` and labels; return (f (B,), sign ±1 (B,))."""
    if not isinstance(input, Tensor) or not input.is_floating_point() or not _is_binary(input):
        raise ValueError(f"{who}: input must be one floating-point logit per sample, shape (B,) or (B, 1), got "
                         f"{tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__}")
    f = input.reshape(-1)
    if not isinstance(target, Tensor) or target.numel() != f.numel() or target.dim() > 2:
        raise ValueError(f"{who}: target must have shape ({f.numel()},) or ({f.numel()}, 1), got "
                         f"{tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__}")
    sign = torch.where(target.reshape(-1).to(f.device) > 0, 1.0, -1.0).to(f.dtype)
    return f, sign


def _margins(input: Tensor, target: Tensor) -> Tensor:
    """(B, C) margins f_y − f_j, with the j = y entry set to +inf (never active)."""
    f_y = input.gather(1, target[:, None])
    m = f_y - input
    return m.scatter(1, target[:, None], math.inf)


# --------------------------------------------------------------------------- hinge
class HingeMarginLoss(nn.Module):
    r"""Multiclass hinge loss with margin κ on the logit differences (Anil et al. 2019).

    Per sample, with margins m_j = f_y − f_j:

    * ``aggregate="sum"`` (default):                    Σ_{j≠y} max(0, κ − m_j)
    * ``aggregate="max"`` (Crammer–Singer):            max(0, κ − min_{j≠y} m_j)

    Zero exactly when f_y − max_{j≠y} f_j ≥ κ, i.e. when the sample is certified at L2 radius
    κ/(√2·L) for an L-Lipschitz f (each f_y − f_j is then √2·L-Lipschitz): choose κ ≈ √2·L·ε for a
    target radius ε. Gradient: −(number of active j) on f_y, +1 on each active f_j.

    Args:
        margin: κ ≥ 0, in logit units.
        aggregate: ``"sum"`` or ``"max"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
    Shapes: input (B, C), target (B,) int → scalar, or (B,) with ``reduction="none"``.
    """

    def __init__(self, margin: float = 1.0, aggregate: str = "sum", reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _nonneg("margin", margin)
        if aggregate not in ("sum", "max"):
            raise ValueError(f"aggregate must be 'sum' or 'max', got {aggregate!r}")
        self.aggregate = aggregate
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target = _multiclass(input, target, type(self).__name__)
        violations = F.relu(self.margin - _margins(input, target))  # j = y: relu(-inf) = 0
        per = violations.sum(1) if self.aggregate == "sum" else violations.max(1).values
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, aggregate={self.aggregate!r}, reduction={self.reduction!r}"


class BinaryHingeLoss(nn.Module):
    r"""Binary hinge loss max(0, κ − y·f(x)) for a single logit, y ∈ {−1, +1}.

    Zero exactly when y·f(x) ≥ κ, i.e. (for an L-Lipschitz f) when x is certified at radius κ/L.
    Note: deel-lip's ``HingeMarginLoss`` uses κ/2 in place of κ; here κ is the full margin.

    Shapes: input (B,) or (B, 1); target same number of labels in {0,1} or {−1,+1}.
    """

    def __init__(self, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _nonneg("margin", margin)
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        f, sign = _binary(input, target, type(self).__name__)
        return _reduce(F.relu(self.margin - sign * f), self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------- KR
def _kr_weights(onehot: Tensor):
    """(w, valid): weights w (B, K) with mean_i w_ik f_ik = mean_{y=k} f_k − mean_{y≠k} f_k, valid (K,).

    ``onehot``: (B, K) in {0, 1}. Column k: +B/n_k on positives, −B/(B − n_k) on negatives;
    a column with no positive or no negative sample gets weight 0 (never 1/0 → NaN).
    """
    B = onehot.shape[0]
    n_pos = onehot.sum(0)
    n_neg = B - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    w_pos = torch.where(valid, B / n_pos.clamp_min(1.0), torch.zeros_like(n_pos))
    w_neg = torch.where(valid, B / n_neg.clamp_min(1.0), torch.zeros_like(n_neg))
    return onehot * w_pos - (1.0 - onehot) * w_neg, valid


class KRLoss(nn.Module):
    r"""Negative Kantorovich–Rubinstein estimate of the Wasserstein-1 distance (Serrurier et al. 2021).

    For a 1-Lipschitz f, W₁(P, Q) = sup_f E_P[f] − E_Q[f] (KR duality), so minimizing
    −(E_{y=+}[f] − E_{y=−}[f]) over a batch trains f towards the optimal transport potential
    between the two classes; the loss alone is a weak classifier (Serrurier et al. 2021) and is
    used inside :class:`HKRLoss`.

    * Binary (single logit): loss = −(mean_{y>0} f − mean_{y≤0} f).
    * Multiclass (one-vs-all, as deel-lip): loss = −(1/K') Σ_k (mean_{y=k} f_k − mean_{y≠k} f_k),
      averaged over the K' classes that have both a positive and a negative sample in the
      batch. A class missing from the batch (or a batch of a single class) contributes nothing
      instead of dividing by zero; with no valid class the loss is 0 (with zero gradient).

    ``reduction="none"`` returns per-sample contributions ℓ_i whose *mean* is the batch loss
    (ℓ_i = −(1/K') Σ_k w_ik f_ik with w_ik = B/n_k on positives, −B/(B−n_k) on negatives), so
    ``"mean"`` gives the loss above and ``"sum"`` gives B times it.
    """

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        who = type(self).__name__
        if isinstance(input, Tensor) and _is_binary(input):
            f, sign = _binary(input, target, who)
            f, onehot = f[:, None], (sign > 0).to(f.dtype)[:, None]
        else:
            target = _multiclass(input, target, who)
            f, onehot = input, F.one_hot(target, input.shape[1]).to(input.dtype)
        w, valid = _kr_weights(onehot)
        per = -(w * f).sum(1) / valid.sum().clamp_min(1).to(f.dtype)
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class HKRLoss(nn.Module):
    r"""Hinge-regularized Kantorovich–Rubinstein loss: α·hinge_κ + KR (Serrurier et al. 2021).

    The paper's form L = E[−Y f] + α·E[(κ − Y f)₊]: the KR term pushes the classes apart
    (large, robust margins), the hinge term with weight α ≥ 0 makes it a classifier. deel-lip's
    α' ∈ [0, 1] form α'·hinge + (1 − α')·KR is this loss with α = α'/(1 − α') times (1 − α').

    Multiclass logits (B, C): hinge = :class:`HingeMarginLoss` (margin on the differences
    f_y − f_j, the quantity the certificate uses; ``aggregate`` as there) and one-vs-all KR;
    single logit: :class:`BinaryHingeLoss` and binary KR. ``reduction`` as in :class:`KRLoss`.
    """

    def __init__(self, alpha: float = 10.0, margin: float = 1.0, aggregate: str = "sum",
                 reduction: str = "mean") -> None:
        super().__init__()
        self.alpha = _nonneg("alpha", alpha)
        self.reduction = _check_reduction(reduction)
        self.hinge = HingeMarginLoss(margin, aggregate, reduction="none")
        self.binary_hinge = BinaryHingeLoss(margin, reduction="none")
        self.kr = KRLoss(reduction="none")

    @property
    def margin(self) -> float:
        return self.hinge.margin

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        hinge = self.binary_hinge if isinstance(input, Tensor) and _is_binary(input) else self.hinge
        per = self.alpha * hinge(input, target) + self.kr(input, target)
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, margin={self.margin}, reduction={self.reduction!r}"


# --------------------------------------------------------------------------- temperature
class TauCrossEntropyLoss(nn.Module):
    r"""Cross-entropy with temperature: CE(τ·f(x), y) (Béthune et al. 2022).

    τ multiplies the logits. With ``divide_by_tau=True`` the loss is CE(τ·f, y)/τ (deel-lip's
    ``TauCrossEntropyLoss``), which tends to the margin-0 multiclass hinge
    max(0, max_{j≠y} f_j − f_y) as τ → ∞ and whose gradient softmax(τf) − e_y does not scale with τ.
    Computed with ``log_softmax`` (stable for any finite τ·f).

    Args:
        tau: τ > 0. label_smoothing: as in ``F.cross_entropy``.
    Shapes: input (B, C), target (B,) int.
    """

    def __init__(self, tau: float = 1.0, divide_by_tau: bool = False, label_smoothing: float = 0.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.tau = _positive("tau", tau)
        self.divide_by_tau = bool(divide_by_tau)
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        target = _multiclass(input, target, type(self).__name__)
        per = F.cross_entropy(self.tau * input, target, reduction="none", label_smoothing=self.label_smoothing)
        if self.divide_by_tau:
            per = per / self.tau
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, divide_by_tau={self.divide_by_tau}, reduction={self.reduction!r}"


class TauBCEWithLogitsLoss(nn.Module):
    r"""Binary cross-entropy with temperature: −log σ(τ·y·f(x)), y ∈ {−1, +1} (Béthune et al. 2022).

    Computed as softplus(−τ·y·f) (stable). ``divide_by_tau=True`` divides by τ (deel-lip's
    convention): then the loss tends to max(0, −y·f) as τ → ∞.
    Shapes: input (B,) or (B, 1); target labels in {0,1} or {−1,+1}.
    """

    def __init__(self, tau: float = 1.0, divide_by_tau: bool = False, reduction: str = "mean") -> None:
        super().__init__()
        self.tau = _positive("tau", tau)
        self.divide_by_tau = bool(divide_by_tau)
        self.reduction = _check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        f, sign = _binary(input, target, type(self).__name__)
        per = F.softplus(-self.tau * sign * f)
        if self.divide_by_tau:
            per = per / self.tau
        return _reduce(per, self.reduction)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, divide_by_tau={self.divide_by_tau}, reduction={self.reduction!r}"
