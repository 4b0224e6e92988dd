"""Björck / Newton–Schulz orthonormalization toward the polar factor.

For a full-rank matrix W = U Σ Vᴴ the polar factor is Q = U Vᴴ: the closest matrix with
orthonormal columns (tall), rows (wide) or both (square). The Björck iteration (order 3)

    W ← W (3I − A) / 2,        A = WᴴW,

maps every singular value s to s(3 − s²)/2 and converges to 1 exactly when 0 < s < √3. If
A = I + T with ‖T‖₂ ≤ e, the next Gram error is at most (3e² + e³)/4 (quadratic
convergence). The order-5 step W ← W (15I − 10A + 3A²)/8 (the next Taylor term of A^(-1/2))
costs one more product and converges cubically: error ≤ (5/8)e³ + O(e⁴) (see
:func:`predicted_error`). We divide W first by a *guaranteed* upper bound of ‖W‖₂ (Gram
iteration), so every singular value lies in (0, 1]. All products are taken on the smaller
Gram side: a wide or tall matrix costs min(m, n)²·max(m, n) per product and the result is
semi-orthogonal.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .spectral import _check_matrix, gram_spectral_bound

__all__ = [
    "bjorck",
    "bjorck_step",
    "gram",
    "orthogonality_error",
    "default_tolerance",
    "predicted_error",
]

_COEFFS = {3: (1.5, -0.5), 5: (15 / 8, -10 / 8, 3 / 8)}


def default_tolerance(dtype: torch.dtype) -> float:
    """Default stopping tolerance on ‖WᴴW − I‖₂ (≈ 2·max|σ − 1|) for a dtype.

    float64 / complex128: 1e-10; float32 and lower precisions (computed in float32): 1e-5.
    """
    return 1e-10 if dtype in (torch.float64, torch.complex128) else 1e-5


def predicted_error(e: float, order: int = 3) -> float:
    """Upper bound of ‖A' − I‖₂ after one step of the given order when ‖A − I‖₂ ≤ e < 1.

    Evaluated exactly as the maximum of |x·p(x)² − 1| over the eigenvalue interval
    x ∈ [1 − e, 1 + e] (p the step polynomial), on a fine grid plus the end points; the
    function is smooth and monotone on each side of 1 for e < 1, so the end points dominate.
    """
    if order not in _COEFFS:
        raise ValueError(f"order must be 3 or 5, got {order}")
    worst = 0.0
    for x in (1.0 - e, 1.0 + e):
        p = sum(c * x**k for k, c in enumerate(_COEFFS[order]))
        worst = max(worst, abs(x * p * p - 1.0))
    return worst


def gram(w: Tensor) -> Tensor:
    """The smaller Gram matrix: WᴴW (n×n) for tall/square W (m ≥ n), WWᴴ (m×m) for wide W."""
    return w.mH @ w if w.shape[-2] >= w.shape[-1] else w @ w.mH


def bjorck_step(w: Tensor, a: Optional[Tensor] = None, order: int = 3) -> Tensor:
    """One polar step of order 3 (Björck) or 5 on the smaller side (differentiable).

    Args:
        w: (..., m, n).
        a: the smaller Gram matrix of ``w`` (:func:`gram`) if already computed.
        order: 3 → ``W (3I − A)/2`` (2 products); 5 → ``W (15I − 10A + 3A²)/8`` (3 products).
    """
    if order not in _COEFFS:
        raise ValueError(f"order must be 3 or 5, got {order}")
    a = gram(w) if a is None else a
    coeffs = _COEFFS[order]
    p = coeffs[1] * a
    if order == 5:
        p = p + coeffs[2] * (a @ a)
    p.diagonal(dim1=-2, dim2=-1).add_(coeffs[0])
    return w @ p if w.shape[-2] >= w.shape[-1] else p @ w


def orthogonality_error(w: Tensor) -> Tensor:
    """‖G − I‖₂ with G the smaller Gram matrix of ``w`` (float64 eigvalsh); shape (...,).

    For σ the singular values, this is max |σ² − 1| ≈ 2 max |σ − 1|.
    """
    with torch.no_grad():
        g = gram(w.detach().to(torch.complex128 if w.is_complex() else torch.float64))
        eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
        return torch.linalg.eigvalsh(g - eye).abs().amax(dim=-1)


def bjorck(
    w: Tensor,
    iterations: int = 40,
    tol: Optional[float] = None,
    prescale: bool = True,
    order: int = 3,
) -> Tensor:
    """Orthonormalize ``w`` toward its polar factor by Björck iterations.

    Args:
        w: (..., m, n), real or complex, full rank. Batched matrices are processed together.
        iterations: maximum number of iterations.
        tol: stop when ‖WᴴW − I‖_F (a guaranteed upper bound of the spectral error, read off
            the Gram matrix the next step needs anyway) is at most ``tol``; ``0`` runs all
            ``iterations``; ``None`` uses :func:`default_tolerance` of the dtype.
        prescale: divide ``w`` first by a guaranteed upper bound of ‖w‖₂ (Gram iteration),
            which guarantees convergence. Disable only when ‖w‖₂ < √3 is known.
        order: 3 (Björck) or 5 (one more product per step, cubic convergence).

    Returns:
        Tensor of the same shape and dtype, with (semi-)orthonormal rows or columns to the
        tolerance reached. Differentiable (autograd through every iteration); to orthonormalize
        a stored weight without gradient, call it under ``torch.no_grad()``.
    """
    _check_matrix(w)
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if tol is None:
        tol = default_tolerance(w.dtype)
    if prescale:
        bound = gram_spectral_bound(w).to(device=w.device, dtype=w.real.dtype)
        w = w / bound[..., None, None]
    for _ in range(iterations):
        a = gram(w)
        if tol > 0:
            with torch.no_grad():
                eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
                if float(torch.linalg.matrix_norm(a.detach() - eye).max()) <= tol:
                    break
        w = bjorck_step(w, a, order=order)
    return w
