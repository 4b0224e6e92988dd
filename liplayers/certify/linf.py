r"""Margin certificates for networks with an ∞→∞ Lipschitz bound (L∞-constrained networks of Anil, Lucas & Grosse 2019).

Derivation of the constant
--------------------------
Let the logit map ``f: (Rⁿ, ‖·‖∞) → (R^C, ‖·‖∞)`` be ``K``-Lipschitz
(:func:`liplayers.nn.linf_linear.linf_lipschitz_bound_of`), ``t`` the class of ``x`` and
``M(x) = f_t(x) − max_{i≠t} f_i(x)`` the margin. For ``‖δ‖∞ ≤ ε`` every logit moves by at most
``Kε``: ``|f_j(x+δ) − f_j(x)| ≤ ‖f(x+δ) − f(x)‖∞ ≤ Kε``. Hence each pairwise margin
``f_t − f_i`` moves by at most ``2Kε`` and

    M(x) > 2Kε   ⟹   argmax f(x + δ) = t   for all ‖δ‖∞ ≤ ε,

so the certified L∞ radius is ``M(x) / (2K)``. The constant is tight for this hypothesis: with
``f(x) = (x₁, −x₁)`` (``K = 1``), ``M = 2x₁`` and ``δ = −ε e₁`` lowers it by exactly ``2ε``.
The condition ``M(x) > Kε/2``, sometimes stated for such networks, is 4× too optimistic for ∞-norm Lipschitz logits —
the ``tests/nn/test_linf.py`` counterexample breaks it. (For an **L2** Lipschitz constant ``L`` the
pairwise margin is ``√2 L``-Lipschitz and the radius is ``M/(√2 L)``, see :mod:`liplayers.certify.margins`.)

A single logit (binary, class = sign of ``f``) moves by at most ``Kε``: radius ``|f(x)|/K``.

Tighter with the last layer: if ``f = W h + b`` with ``h`` ``K'``-Lipschitz (∞→∞), then
``f_t − f_i = (w_t − w_i)ᵀh + …`` moves by at most ``‖w_t − w_i‖₁ K' ε``, and
radius ``= min_{i≠t} (f_t − f_i) / (‖w_t − w_i‖₁ K')`` — never worse, since
``‖w_t − w_i‖₁ ≤ 2 max_j ‖w_j‖₁``. Pass ``last_layer_weight=W`` and ``linf_lipschitz=K'``.

Rounding. Same engineering margin as :func:`liplayers.certify.certified_radius` (see
:mod:`liplayers.certify.margins`): each logit is assumed accurate to ``rtol·(|f_k| + 1)``
(default ``rtol`` = 32 × machine epsilon of the logits' dtype), each pairwise margin is
reduced by ``2·rtol·(|f_t| + |f_i| + 2)`` (error at x and at x′), a single logit's by
``2·rtol·(|f| + 1)``, and ``K`` is inflated by a relative 1e-6. Radii are float64, ≥ 0.

Why a separate function rather than ``certified_radius(..., norm="linf")``: in
:func:`~liplayers.certify.certified_radius` ``norm`` names the *threat* norm while
``lipschitz`` is always an **L2** bound (``norm="linf"`` converts the L2 radius with
``‖δ‖₂ ≤ √n‖δ‖∞``). Here the *bound itself* is an ∞→∞ constant, the constant is ``2K``
instead of ``√2 L``, the last-layer variant uses ``‖w_t − w_i‖₁`` instead of ``‖·‖₂``, and
no input dimension is involved: overloading ``norm`` would let an L2 bound be read as an ∞
bound (or the converse) silently. A separately named function with a separately named
argument (``linf_lipschitz``) cannot be confused.
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


_K_INFLATION = 1.0 + 1e-6


def _rtol(rtol, dtype: torch.dtype) -> float:
    if rtol is None:
        return 32.0 * torch.finfo(dtype).eps
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not math.isfinite(rtol) or rtol < 0:
        raise ValueError(f"rtol must be a finite float >= 0, got {rtol!r}")
    return float(rtol)


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
    rtol: Optional[float] = None,
) -> Tensor:
    r"""Certified L∞ radius ``M(x)/(2K)`` per sample, ``(B,)`` float64 (see the module docstring).

    Args:
        logits: ``(B, C)`` with ``C ≥ 2``, or one logit per sample ``(B,)``/``(B, 1)``
            (class = ``f > 0``; radius ``|f|/K``).
        linf_lipschitz: ``K``, a guaranteed ∞→∞ Lipschitz bound of the map producing ``logits``
            (:func:`liplayers.nn.linf_linear.linf_lipschitz_bound_of`), or, with ``last_layer_weight``,
            of the body before the last linear layer.
        labels: ``(B,)`` integer labels; if given, misclassified samples get radius 0 (not
            certified). Binary labels are 0/1 (or ≤0/>0). Without labels the predicted
            class is certified.
        last_layer_weight: ``(C, d)`` weight ``W`` of the last linear layer (bias irrelevant)
            for the tighter ``min_i (f_t − f_i)/(‖w_t − w_i‖₁ K)``.
        rtol: relative float error assumed per logit (default 32·eps of the logits' dtype).

    Returns:
        ``(B,)`` float64 radii ``≥ 0`` in input units (∞ norm): every ``x'`` with
        ``‖x' − x‖∞ ≤ radius`` has the same predicted class (ties count as a change).
    """
    K = _check_K(linf_lipschitz) * _K_INFLATION
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError("logits must be a floating-point tensor of shape (B, C), (B,) or (B, 1)")
    if not bool(torch.isfinite(logits.detach()).all()):
        raise ValueError("logits contain non-finite values")
    tol = _rtol(rtol, logits.dtype)
    f = logits.detach().to(torch.float64)
    if f.dim() == 1:
        f = f[:, None]
    if f.dim() != 2 or f.shape[1] < 1:
        raise ValueError(f"logits must have shape (B, C), (B,) or (B, 1), got {tuple(logits.shape)}")
    B = f.shape[0]
    y = _labels(labels, B, f.device)
    if f.shape[1] == 1:
        if last_layer_weight is not None:
            w = last_layer_weight.detach().to(torch.float64).reshape(1, -1)
            K = K * float(w.abs().sum()) * (1 + (w.numel() + 1) * 2.0 ** -52)
        z = f[:, 0]
        margin = z.abs() - 2.0 * tol * (z.abs() + 1.0)
        if y is not None:
            margin = torch.where((z > 0) == (y > 0), margin, torch.zeros_like(margin))
        return margin.clamp_min(0) / K if K > 0 else torch.zeros_like(margin)
    if y is not None and (bool((y < 0).any()) or bool((y >= f.shape[1]).any())):
        raise ValueError(f"labels must lie in [0, {f.shape[1] - 1}]")
    t = f.argmax(1) if y is None else y
    f_t = f.gather(1, t[:, None])
    margins = f_t - f - 2.0 * tol * (f_t.abs() + f.abs() + 2.0)  # (B, C), f_t − f_i − slack
    if last_layer_weight is None:
        denom = torch.full_like(f, 2.0 * K)
    else:
        W = last_layer_weight.detach().to(device=f.device, dtype=torch.float64)
        if W.dim() != 2 or W.shape[0] != f.shape[1]:
            raise ValueError(f"last_layer_weight must have shape (C={f.shape[1]}, d), got {tuple(W.shape)}")
        l1 = (W[t][:, None, :] - W[None, :, :]).abs().sum(-1) * (1 + (W.shape[1] + 2) * 2.0 ** -52)
        denom = K * l1
    # a pair with w_t = w_i never swaps (its difference is constant): infinite radius if its
    # margin is positive, 0 otherwise
    ratio = torch.where(denom > 0, margins / denom.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.where(margins > 0, math.inf, 0.0))
    ratio = ratio.scatter(1, t[:, None], math.inf)  # exclude i = t
    r = ratio.amin(1).clamp_min(0)
    if y is not None:  # misclassified (or tied) samples are not certified
        wrong = f.argmax(1) != y
        r = torch.where(wrong, torch.zeros_like(r), r)
    return r


def certify_linf(logits: Tensor, linf_lipschitz: float, eps: float, labels: Optional[Tensor] = None,
                 *, last_layer_weight: Optional[Tensor] = None, rtol: Optional[float] = None) -> Tensor:
    """Boolean ``(B,)``: the prediction (correct one, if ``labels``) is certified for ``‖δ‖∞ ≤ eps``.

    ``M(x) > 2Kε`` (strict), i.e. ``certified_radius_linf(...) > eps``.
    """
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a non-negative number, got {eps!r}")
    return certified_radius_linf(logits, linf_lipschitz, labels, last_layer_weight=last_layer_weight, rtol=rtol) > eps


def linf_margin_condition(linf_lipschitz: float, eps: float, *, single_logit: bool = False) -> float:
    """The margin ``M`` must exceed this for an ∞-radius ``eps`` certificate: ``2Kε`` (``Kε`` single logit)."""
    K = _check_K(linf_lipschitz)
    return (1.0 if single_logit else 2.0) * K * float(eps)
