r"""Polar factors of batches of matrices by Newton–Schulz iterations (the LOT layer's maths).

LOT (Xu, Li & Li, "LOT: Layer-wise Orthogonal Training on Improving l2 Certified
Robustness", NeurIPS 2022) makes a circular convolution orthogonal frequency by frequency:
with V(ω) the transfer matrices of a free kernel, W(ω) = V(ω) (V(ω)ᴴV(ω))^(-1/2) — the polar
factor of V(ω), unitary for square V, with orthonormal columns for tall V (and
(VVᴴ)^(-1/2)V, orthonormal rows, for wide V).

The paper computes A^(-1/2), A = VᴴV/c, by the coupled Newton–Schulz iteration
Y₀ = A, Z₀ = I, T_k = (3I − Z_kY_k)/2, Y_{k+1} = Y_kT_k, Z_{k+1} = T_kZ_k (Z_k → A^(-1/2)).
Every Z_k is a polynomial q_k(A) with q_{k+1}(a) = q_k(a)(3 − a q_k(a)²)/2, so
W_k = V q_k(A)/√c satisfies W_{k+1} = W_k(3I − W_kᴴW_k)/2: the same iterates as the Björck
(Newton–Schulz polar) step on W₀ = V/√c, which is what is computed here
(:func:`~liplayers.functional.orthogonalization.bjorck_step`, on the smaller Gram side). That form
needs one matrix less per step and corrects its own rounding. Each singular value s of W₀ is
mapped to s(3 − s²)/2: with c = ‖V‖_F² ≥ ‖V‖₂² every s lies in [0, 1], stays there, and
converges to 1 (quadratically near 1, by a factor ≈ 1.5 per step when small; zero singular
values stay zero). So W_k never has a singular value above 1 in exact arithmetic, and it is
orthogonal only in the limit: the eval path iterates until the residual ‖WᴴW − I‖_F
(a guaranteed bound of max |σ² − 1|) is below a tolerance.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .orthogonalization import bjorck_step, default_tolerance, gram

__all__ = ["newton_schulz_polar", "newton_schulz_polar_to_tolerance", "polar_residual"]


def _prescaled(v: Tensor) -> Tensor:
    """V / ‖V‖_F per matrix (all singular values in [0, 1]); zero matrices stay zero."""
    fro = torch.linalg.matrix_norm(v).clamp_min(torch.finfo(v.real.dtype).tiny)
    return v / fro[..., None, None].to(v.dtype)


def polar_residual(w: Tensor) -> Tensor:
    """‖G − I‖_F for G the smaller Gram matrix of each matrix of ``w`` (…, m, n); shape (…,)."""
    g = gram(w)
    eye = torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    return torch.linalg.matrix_norm(g - eye)


def newton_schulz_polar(v: Tensor, iterations: int) -> Tensor:
    """``iterations`` Newton–Schulz steps toward the polar factor of each matrix of ``v`` (training).

    Shapes: v (…, m, n), real or complex → same shape and dtype. Differentiable. The result
    has singular values in [0, 1] (exact arithmetic), approaching 1 as ``iterations`` grows.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    w = _prescaled(v)
    for _ in range(iterations):
        w = bjorck_step(w)
    return w


def newton_schulz_polar_to_tolerance(v: Tensor, tol: Optional[float] = None,
                                     max_iterations: int = 100) -> Tuple[Tensor, int]:
    """Newton–Schulz steps until every matrix has ‖WᴴW − I‖_F ≤ ``tol`` (no grad; for eval).

    ``tol`` defaults to :func:`~liplayers.functional.orthogonalization.default_tolerance` of the
    dtype (1e-10 in complex128). Matrices still above ``tol`` after ``max_iterations`` steps
    (numerically rank-deficient: a singular value ~0 grows only by 1.5 per step, an exact 0
    never) are replaced by the polar factor U Vᴴ of their SVD, one of the limits the
    iteration approaches (unitary whatever the rank). Returns (W, number of steps taken).
    """
    if tol is None:
        tol = default_tolerance(v.dtype)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 0:
        raise ValueError(f"max_iterations must be an integer >= 0, got {max_iterations!r}")
    with torch.no_grad():
        if not bool(torch.isfinite(torch.view_as_real(v) if v.is_complex() else v).all()):
            raise ValueError("cannot orthonormalize matrices with non-finite values (NaN or Inf)")
        w = _prescaled(v.detach())
        steps = 0
        res = polar_residual(w)
        while steps < max_iterations and bool((res > tol).any()):
            w = bjorck_step(w)
            res = polar_residual(w)
            steps += 1
        bad = res > tol
        if bool(bad.any()):
            u, _, vh = torch.linalg.svd(w[bad], full_matrices=False)
            w[bad] = u @ vh
    return w, steps
