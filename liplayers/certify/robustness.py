r"""Mean certifiable robustness (Béthune et al., "Pay attention to your loss", NeurIPS 2022), and the
Lipschitz constant of a Gaussian-smoothed classifier (Cohen, Rosenfeld & Kolter 2019; Salman et al. 2019).

Mean certifiable robustness (MCR)
---------------------------------
For a binary 1-Lipschitz scorer ``f`` (class = sign f) and labels ``y ∈ {−1, +1}``, ``|f(x)|`` is
the certified radius of ``x`` and Béthune et al. (2022) define

    R(f) = E[1{y f(x) > 0} |f(x)|] − E[1{y f(x) < 0} |f(x)|] = E[y · f(x)],

i.e. the mean **signed** certified radius: positive (the radius) where ``x`` is correctly
classified, negative (minus the radius within which it stays *mis*classified) where it is
not — confidence in an error counts against the model. It is the KR objective, so its
maximum over 1-Lipschitz ``f`` is ``W₁(P, Q)`` between the two classes (Kantorovich–Rubinstein duality; see
``examples/wasserstein.py``). For an ``L``-Lipschitz scorer the radius is ``|f|/L``.

Multiclass analogue (defined here). With logits ``f`` that are ``L``-Lipschitz in L2, the
signed margin ``s(x) = f_y(x) − max_{j≠y} f_j(x)`` is positive iff ``x`` is correctly
classified, and ``|s|/(√2 L)`` is a certified radius *of the decision at x* whichever its
sign: every pairwise difference ``f_i − f_j`` is ``√2 L``-Lipschitz, so within that radius the
correct class stays on top (``s > 0``) or stays beaten by the same wrong class (``s < 0``:
``f_k − f_y`` stays positive for the ``k`` beating ``y``). So we define

    MCR = E[ s(x) / (√2 L) ]   (L2),      E[ s(x) / (2K) ]   (∞ norm, K an ∞→∞ bound),

which reduces to Béthune et al.'s ``E[y f(x)]/L`` for a single logit. Like the binary MCR it is
the Kantorovich-style objective ``E[f_y − max_{j≠y} f_j]`` up to the constant. With
``lipschitz=None`` the raw mean signed margin is returned (no normalization).

Smoothed classifiers
--------------------
For a base classifier ``h`` and Gaussian noise ``N(0, σ²I)``, ``p_A(x) = P(h(x + δ) = A)``.
Then ``x ↦ σ·Φ⁻¹(p_A(x))`` is **1-Lipschitz** in L2 (Salman et al. 2019, Lemma 2; Levine et
al. 2020): for any measurable ``g: Rⁿ → [0, 1]``, ``Φ⁻¹(E g(x + σZ))`` is ``1/σ``-Lipschitz
(Gaussian isoperimetry: the worst ``g`` is a half-space indicator, for which it is affine with
slope exactly ``1/σ``). This is what makes Cohen et al.'s radius ``σΦ⁻¹(p_A)`` (L2) valid, and
it is tight. The probability itself, ``x ↦ p_A(x)``, is only ``1/(σ√(2π))``-Lipschitz
(``sup_{‖u‖=1} E[g(x+σZ) uᵀZ]/σ ≤ E[max(uᵀZ, 0)]/σ``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["signed_certified_radius", "mean_certifiable_robustness", "smoothed_lipschitz_bound"]


def _check_lipschitz(lipschitz) -> Optional[float]:
    if lipschitz is None:
        return None
    if isinstance(lipschitz, bool) or not isinstance(lipschitz, (int, float)) or not math.isfinite(lipschitz) \
            or lipschitz <= 0:
        raise ValueError(f"lipschitz must be a positive finite number or None, got {lipschitz!r}")
    return float(lipschitz)


def signed_certified_radius(
    logits: Tensor,
    labels: Tensor,
    lipschitz: Optional[float] = 1.0,
    norm: str = "l2",
) -> Tensor:
    r"""Signed certified radius per sample, ``(B,)``: ``> 0`` correct and certified, ``< 0`` misclassified.

    Args:
        logits: ``(B, C)`` with ``C ≥ 2``, or one logit per sample ``(B,)``/``(B, 1)``.
        labels: ``(B,)``; integer class indices for ``(B, C)``; for a single logit, labels in
            ``{0, 1}`` or ``{−1, +1}`` (``> 0`` is the positive class).
        lipschitz: ``L`` (L2→L2 bound of the logit map) for ``norm="l2"``, ``K`` (∞→∞ bound) for
            ``norm="linf"``; ``None`` returns the signed margin itself.
        norm: ``"l2"`` — ``s/(√2 L)`` (``y f/L`` for one logit); ``"linf"`` — ``s/(2K)``
            (``y f/K``), see :mod:`liplayers.certify.linf`.

    ``|result|`` is a radius within which the decision at ``x`` (right or wrong) cannot change.
    Béthune et al. (2022).
    """
    L = _check_lipschitz(lipschitz)
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape (B, C), (B,) or (B, 1)")
    if not isinstance(labels, Tensor):
        raise ValueError("labels must be a tensor of shape (B,)")
    f = logits[:, None] if logits.dim() == 1 else logits
    if f.dim() != 2:
        raise ValueError(f"logits must have shape (B, C), (B,) or (B, 1), got {tuple(logits.shape)}")
    B = f.shape[0]
    if labels.reshape(-1).shape != (B,):
        raise ValueError(f"labels must have shape ({B},), got {tuple(labels.shape)}")
    labels = labels.reshape(-1).to(f.device)
    if f.shape[1] == 1:
        y = torch.where(labels > 0, 1.0, -1.0).to(f.dtype)
        s = y * f[:, 0]
        scale = 1.0
    else:
        if labels.is_floating_point():
            raise ValueError("labels must be integer class indices for (B, C) logits")
        yi = labels.to(torch.int64)
        if bool((yi < 0).any()) or bool((yi >= f.shape[1]).any()):
            raise ValueError(f"labels must lie in [0, {f.shape[1] - 1}]")
        f_y = f.gather(1, yi[:, None]).squeeze(1)
        other = f.scatter(1, yi[:, None], float("-inf")).amax(1)
        s = f_y - other
        scale = math.sqrt(2.0) if norm == "l2" else 2.0
    if L is None:
        return s
    return s / (scale * L)


def mean_certifiable_robustness(
    logits: Tensor,
    labels: Tensor,
    lipschitz: Optional[float] = 1.0,
    norm: str = "l2",
) -> Tensor:
    r"""Mean certifiable robustness: the mean of :func:`signed_certified_radius`, a 0-d tensor.

    Binary single logit with ``lipschitz=1``: exactly ``E[y·f(x)]`` (Béthune et al.
    2022); multiclass: ``E[(f_y − max_{j≠y} f_j)/(√2 L)]`` (L2) or ``/(2K)`` (L∞),
    see the module docstring. Differentiable (``−MCR`` is a KR-type loss).
    """
    return signed_certified_radius(logits, labels, lipschitz, norm).mean()


def smoothed_lipschitz_bound(sigma: float, scale: str = "probit") -> float:
    r"""Lipschitz constant (L2) of a Gaussian-smoothed classifier's class probability.

    ``scale="probit"``: ``x ↦ σ·Φ⁻¹(p_A(x))`` is 1-Lipschitz (returns 1.0; Salman et al. 2019,
    tight); ``scale="probability"``: ``x ↦ p_A(x)`` is ``1/(σ√(2π))``-Lipschitz. ``sigma`` is the
    noise standard deviation (input units, > 0). See the module docstring and
    :class:`liplayers.certify.SmoothedClassifier` (Cohen, Rosenfeld & Kolter 2019).
    """
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
    if scale == "probit":
        return 1.0
    if scale == "probability":
        return 1.0 / (float(sigma) * math.sqrt(2.0 * math.pi))
    raise ValueError(f"scale must be 'probit' or 'probability', got {scale!r}")
