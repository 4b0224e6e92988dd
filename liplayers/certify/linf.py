r"""Margin certificates for networks with an ∞→∞ Lipschitz bound (seed 004 §2.2.2, Anil et al. 2019).

Derivation of the constant
--------------------------
Let the logit map ``f: (Rⁿ, ‖·‖∞) → (R^C, ‖·‖∞)`` be ``K``-Lipschitz
(:func:`liplayers.linf.linf_lipschitz_bound_of`), ``t`` the class of ``x`` and
``M(x) = f_t(x) − max_{i≠t} f_i(x)`` the margin. For ``‖δ‖∞ ≤ ε`` every logit moves by at most
``Kε``: ``|f_j(x+δ) − f_j(x)| ≤ ‖f(x+δ) − f(x)‖∞ ≤ Kε``. Hence each pairwise margin
``f_t − f_i`` moves by at most ``2Kε`` and

    M(x) > 2Kε   ⟹   argmax f(x + δ) = t   for all ‖δ‖∞ ≤ ε,

so the certified L∞ radius is ``M(x) / (2K)``. The constant is tight for this hypothesis: with
``f(x) = (x₁, −x₁)`` (``K = 1``), ``M = 2x₁`` and ``δ = −ε e₁`` lowers it by exactly ``2ε``.
Seed 004 states ``M(x) > Kε/2``, which is 4× too optimistic for ∞-norm Lipschitz logits —
the ``tests/test_linf.py`` counterexample breaks it. (For an **L2** Lipschitz constant ``L`` the
pairwise margin is ``√2 L``-Lipschitz and the radius is ``M/(√2 L)``, see DESIGN.md.)

A single logit (binary, class = sign of ``f``) moves by at most ``Kε``: radius ``|f(x)|/K``.

Tighter with the last layer: if ``f = W h + b`` with ``h`` ``K'``-Lipschitz (∞→∞), then
``f_t − f_i = (w_t − w_i)ᵀh + …`` moves by at most ``‖w_t − w_i‖₁ K' ε``, and
radius ``= min_{i≠t} (f_t − f_i) / (‖w_t − w_i‖₁ K')`` — never worse, since
``‖w_t − w_i‖₁ ≤ 2 max_j ‖w_j‖₁``. Pass ``last_layer_weight=W`` and ``linf_lipschitz=K'``.

Rounding. The logits carry floating-point error; each margin is reduced by
``slack = 8 · eps(dtype) · max(1, max_j |f_j|)`` before dividing (a conservative allowance
for the rounding of the final layer's output and of the subtraction). Certificates are
never made larger by it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["certified_radius_linf", "certify_linf", "linf_margin_condition"]


def _check_K(K) -> float:
    if isinstance(K, bool) or not isinstance(K, (int, float)) or not math.isfinite(K) or K <= 0:
        raise ValueError(f"linf_lipschitz must be a positive finite number, got {K!r}")
    return float(K)


def _slack(logits: Tensor) -> Tensor:
    """Per-sample rounding allowance on margins, (B,)."""
    eps = torch.finfo(logits.dtype).eps
    return 8.0 * eps * logits.detach().abs().reshape(logits.shape[0], -1).amax(1).clamp_min(1.0)


def _labels(labels: Optional[Tensor], B: int, device) -> Optional[Tensor]:
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.shape != (B,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({B},), got "
                         f"{tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__}")
    return labels.to(device=device, dtype=torch.int64)


def certified_radius_linf(
    logits: Tensor,
    linf_lipschitz: float,
    labels: Optional[Tensor] = None,
    *,
    last_layer_weight: Optional[Tensor] = None,
) -> Tensor:
    r"""Certified L∞ radius ``M(x)/(2K)`` per sample, ``(B,)`` (module docstring; seed 004 §2.2.2).

    Args:
        logits: ``(B, C)`` with ``C ≥ 2``, or one logit per sample ``(B,)``/``(B, 1)``
            (class = ``f > 0``; radius ``|f|/K``).
        linf_lipschitz: ``K``, a guaranteed ∞→∞ Lipschitz bound of the map producing ``logits``
            (or, with ``last_layer_weight``, of the body before the last linear layer).
        labels: ``(B,)`` integer labels; if given, misclassified samples get radius 0 (not
            certified). Binary labels are 0/1 (or ≤0/>0). Without labels the predicted
            class is certified.
        last_layer_weight: ``(C, d)`` weight ``W`` of the last linear layer (bias irrelevant)
            for the tighter ``min_i (f_t − f_i)/(‖w_t − w_i‖₁ K)``.

    Returns:
        ``(B,)`` float radii ``≥ 0``, in input units (∞ norm): every ``x'`` with
        ``‖x' − x‖∞ < radius`` has the same predicted class.
    """
    K = _check_K(linf_lipschitz)
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape (B, C), (B,) or (B, 1)")
    f = logits.detach()
    if f.dim() == 1:
        f = f[:, None]
    if f.dim() != 2 or f.shape[1] < 1:
        raise ValueError(f"logits must have shape (B, C), (B,) or (B, 1), got {tuple(logits.shape)}")
    B = f.shape[0]
    y = _labels(labels, B, f.device)
    slack = _slack(f)
    if f.shape[1] == 1:
        if last_layer_weight is not None:
            w = last_layer_weight.detach().to(torch.float64).reshape(1, -1)
            K = K * float(w.abs().sum()) * (1 + (w.numel() + 1) * 2.0 ** -52)
        z = f[:, 0]
        margin = z.abs()
        if y is not None:
            margin = torch.where((z > 0) == (y > 0), margin, torch.zeros_like(margin))
        return ((margin - slack).clamp_min(0) / K).to(f.dtype)
    t = f.argmax(1) if y is None else y
    f_t = f.gather(1, t[:, None])
    diffs = f_t - f  # (B, C), f_t − f_i
    if last_layer_weight is None:
        denom = torch.full_like(f, 2.0 * K)
    else:
        W = last_layer_weight.detach().to(device=f.device, dtype=torch.float64)
        if W.dim() != 2 or W.shape[0] != f.shape[1]:
            raise ValueError(f"last_layer_weight must have shape (C={f.shape[1]}, d), got {tuple(W.shape)}")
        wt = W[t]  # (B, d)
        l1 = (wt[:, None, :] - W[None, :, :]).abs().sum(-1) * (1 + (W.shape[1] + 2) * 2.0 ** -52)
        denom = (K * l1).to(f.dtype)
    ratio = (diffs - slack[:, None]) / denom
    ratio = ratio.scatter(1, t[:, None], math.inf)  # exclude i = t
    r = ratio.amin(1).clamp_min(0)
    r = torch.where(torch.isfinite(r), r, torch.zeros_like(r))  # zero denominators: not certified
    return r


def certify_linf(logits: Tensor, linf_lipschitz: float, eps: float, labels: Optional[Tensor] = None,
                 *, last_layer_weight: Optional[Tensor] = None) -> Tensor:
    """Boolean ``(B,)``: the prediction (correct one, if ``labels``) is certified for ``‖δ‖∞ ≤ eps``.

    ``M(x) > 2Kε`` (strict), i.e. ``certified_radius_linf(...) > eps``.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    return certified_radius_linf(logits, linf_lipschitz, labels, last_layer_weight=last_layer_weight) > eps


def linf_margin_condition(linf_lipschitz: float, eps: float, *, single_logit: bool = False) -> float:
    """The margin ``M`` must exceed this for an ∞-radius ``eps`` certificate: ``2Kε`` (``Kε`` single logit)."""
    K = _check_K(linf_lipschitz)
    return (1.0 if single_logit else 2.0) * K * float(eps)
