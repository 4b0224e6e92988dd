"""Björck / Newton–Schulz orthonormalization toward the polar factor.

For a full-rank matrix W = U Σ Vᴴ the polar factor is Q = U Vᴴ: the closest matrix with
orthonormal columns (tall), rows (wide) or both (square). The Björck iteration (order 3)

    W ← W (3I − A) / 2,        A = WᴴW,

maps every singular value s to s(3 − s²)/2 and converges to 1 exactly when 0 < s < √3. If
A = I + T with ‖T‖₂ ≤ e, the next Gram error is at most (3e² + e³)/4 (quadratic
convergence). The order-5 step W ← W (15I − 10A + 3A²)/8 (the next Taylor term of A^(-1/2))
costs one more product and converges cubically: error ≤ (5/8)e³ + O(e⁴). When an estimate e
of ‖A − I‖₂ is known, the quadratic p(t) = 1 − (1/2 + 15e²/64)t + (3/8 + 17e²/64)t² in
t = A − I is a near-minimax choice on t ∈ [−e, e] (it equioscillates like a Chebyshev
polynomial) and is four times more accurate: error ≈ (5/32)e³ (see :func:`predicted_error`). We divide W first by a *guaranteed* upper bound of ‖W‖₂ (Gram
iteration), so every singular value lies in (0, 1]. All products are taken on the smaller
Gram side: a wide or tall matrix costs min(m, n)²·max(m, n) per product and the result is
semi-orthogonal.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import math

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
    "tuned_coefficients",
    "step_coefficients",
    "gram_symmetric",
    "gram_eigenvalue_bound",
    "polar_step_gain",
    "lanczos_extremes",
]

_COEFFS = {3: (1.5, -0.5), 5: (15 / 8, -10 / 8, 3 / 8)}


def default_tolerance(dtype: torch.dtype) -> float:
    """Default stopping tolerance on ‖WᴴW − I‖₂ (≈ 2·max|σ − 1|) for weights stored in ``dtype``.

    float64 / complex128: 1e-10; float32: 1e-4, i.e. max |σ − 1| ≤ 5e-5 (float32 products of
    size 1024 are accurate to ~1e-6); bfloat16 / float16: 4 ulps of the storage type (3.1e-2 /
    3.9e-3) — rounding the orthonormal factor to these types alone moves σ by ~1 ulp, so a
    tighter target would re-orthonormalize a stored weight at every load.
    """
    if dtype in (torch.float64, torch.complex128):
        return 1e-10
    if dtype in (torch.bfloat16, torch.float16):
        return 4.0 * torch.finfo(dtype).eps
    return 1e-4


def tuned_coefficients(e: float) -> tuple:
    """Coefficients (c₀, c₁, c₂) of p(t) = c₀ + c₁t + c₂t², t = A − I, tuned for ‖A − I‖₂ ≤ e.

    Near-minimax for max over t ∈ [−e, e] of |(1 + t)p(t)² − 1| (fitted numerically; the
    error is ≈ (5/32)e³ against (5/8)e³ for the Taylor coefficients (1, −1/2, 3/8)).
    """
    return (1.0, -0.5 - 15.0 / 64.0 * e * e, 0.375 + 17.0 / 64.0 * e * e)


def predicted_error(e: float, order: int = 3, tuned: bool = False) -> float:
    """Upper bound of ‖A' − I‖₂ after one step when ‖A − I‖₂ ≤ e < 1.

    The step maps each eigenvalue x of A to x·p(x)², so the new error is the maximum of
    |x·p(x)² − 1| over x ∈ [1 − e, 1 + e]. For the Taylor polynomials that maximum is at the
    end points (the function is monotone on each side of 1); for the tuned order-5
    polynomial it is evaluated on a grid of 257 points plus 1% of slack (checked against a
    200 001-point grid for e ≤ 0.6: the slack is never used up).
    """
    if order not in _COEFFS:
        raise ValueError(f"order must be 3 or 5, got {order}")
    if order == 5 and tuned:
        c0, c1, c2 = tuned_coefficients(e)
        t = np.linspace(-e, e, 257)
        p = c0 + c1 * t + c2 * t * t
        return float(np.abs((1.0 + t) * p * p - 1.0).max()) * 1.01
    worst = 0.0
    for x in (1.0 - e, 1.0 + e):
        p = sum(c * x**k for k, c in enumerate(_COEFFS[order]))
        worst = max(worst, abs(x * p * p - 1.0))
    return worst


def step_coefficients(order: int = 3, e: Optional[float] = None) -> tuple:
    """Coefficients (k₀, k₁[, k₂]) of the step ``W ← W p(A)``, p(A) = k₀I + k₁A (+ k₂A²).

    Order 3: (3/2, −1/2); order 5: the Taylor (15/8, −10/8, 3/8), or with ``e`` (an estimate of
    ‖A − I‖₂) the tuned polynomial of :func:`tuned_coefficients` written in powers of A.
    """
    if order not in _COEFFS:
        raise ValueError(f"order must be 3 or 5, got {order}")
    if order == 5 and e is not None:
        c0, c1, c2 = tuned_coefficients(e)  # in t = A − I: p = c0 + c1 t + c2 t²
        return (c0 - c1 + c2, c1 - 2 * c2, c2)
    return _COEFFS[order]


def gram(w: Tensor) -> Tensor:
    """The smaller Gram matrix: WᴴW (n×n) for tall/square W (m ≥ n), WWᴴ (m×m) for wide W."""
    return w.mH @ w if w.shape[-2] >= w.shape[-1] else w @ w.mH


def bjorck_step(w: Tensor, a: Optional[Tensor] = None, order: int = 3, e: Optional[float] = None) -> Tensor:
    """One polar step of order 3 (Björck) or 5 on the smaller side (differentiable).

    Args:
        w: (..., m, n).
        a: the smaller Gram matrix of ``w`` (:func:`gram`) if already computed.
        order: 3 → ``W (3I − A)/2`` (2 products); 5 → ``W (15I − 10A + 3A²)/8`` (3 products).
        e: for order 5, an estimate of ‖A − I‖₂: use the tuned coefficients
            (:func:`tuned_coefficients`) instead of the Taylor ones.
    """
    coeffs = step_coefficients(order, e)
    a = gram(w) if a is None else a
    if torch.is_grad_enabled() and (w.requires_grad or a.requires_grad):
        p = coeffs[1] * a
        if order == 5:
            p = p + coeffs[2] * (a @ a)
    else:  # no autograd: one temporary (A² accumulated in place into p)
        p = a.mul(coeffs[1])
        if order == 5:
            if p.dim() == 2:
                p.addmm_(a, a, alpha=coeffs[2])
            else:
                p.add_(a @ a, alpha=coeffs[2])
    p.diagonal(dim1=-2, dim2=-1).add_(coeffs[0])
    return w @ p if w.shape[-2] >= w.shape[-1] else p @ w


def gram_symmetric(w: Tensor) -> Tensor:
    """:func:`gram` of a 2-D ``w`` from three block products instead of one full product.

    With the rows (wide ``w``) or columns (tall ``w``) split in two halves, the Gram matrix
    is [[G₁₁, G₁₂], [G₁₂ᴴ, G₂₂]]: three products of half the size, 3/4 of the multiply-adds
    (about 20% faster for sides ≥ 256 on one CPU thread), and the result is exactly
    Hermitian (a full product is so only up to rounding). Smaller sides use :func:`gram`.
    """
    x = w.mH if w.shape[-2] >= w.shape[-1] else w  # rows of x: the smaller side
    n = x.shape[-2]
    if w.dim() != 2 or n < 256:
        return gram(w)
    h = n // 2
    x1, x2 = x[:h], x[h:]
    if torch.is_grad_enabled() and w.requires_grad:
        g12 = x1 @ x2.mH
        return torch.cat((torch.cat((x1 @ x1.mH, g12), 1), torch.cat((g12.mH, x2 @ x2.mH), 1)), 0)
    g = x.new_empty(n, n)  # no autograd: the blocks written in place (no concatenated copies)
    torch.mm(x1, x1.mH, out=g[:h, :h])
    torch.mm(x1, x2.mH, out=g[:h, h:])
    torch.mm(x2, x2.mH, out=g[h:, h:])
    g[h:, :h].copy_(g[:h, h:].mH)
    return g


def lanczos_extremes(s: Tensor, steps: int = 12) -> Tuple[float, float]:
    """Estimates (θ_min, θ_max) of the extreme eigenvalues of the symmetric matrix ``s`` (n×n).

    Lanczos with full reorthogonalization from a fixed start vector (deterministic), in the
    precision of ``s`` (float32 or float64; lower precisions in float32; the tridiagonal matrix
    in float64): the Ritz values lie inside the spectrum, so θ_max ≤ λ_max and θ_min ≥ λ_min
    (up to the rounding of the products, ~√n·u·‖s‖₂); after 12 steps they are within a few
    percent of the spectral width for the Gram matrices of nearly orthonormal weights (against
    ~10–20% for as many power iterations), at the cost of 12 matrix–vector products. They are
    estimates: nothing guaranteed may rest on them.
    """
    s = s.detach()
    if s.dtype not in (torch.float32, torch.float64):
        s = s.to(torch.float32)
    n = s.shape[0]
    g = torch.Generator(device="cpu").manual_seed(n)
    q = torch.randn(n, generator=g, dtype=torch.float64).to(device=s.device, dtype=s.dtype)  # same start in any dtype
    q = q / q.norm()
    basis = torch.empty(min(steps, n), n, dtype=s.dtype, device=s.device)
    alphas, betas = [], []
    for j in range(basis.shape[0]):
        basis[j] = q
        w = s @ q
        alphas.append(float(q @ w))
        w = w - basis[: j + 1].mT @ (basis[: j + 1] @ w)  # full reorthogonalization (twice is enough)
        w = w - basis[: j + 1].mT @ (basis[: j + 1] @ w)
        beta = float(w.norm())
        if not beta > 1e-12 * max(1.0, abs(alphas[-1])):
            break
        betas.append(beta)
        q = w / beta
    m = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        t = t + torch.diag(off, 1) + torch.diag(off, -1)
    ritz = torch.linalg.eigvalsh(t)
    return float(ritz[0]), float(ritz[-1])


def _cholesky(m: Tensor, leaf: int = 256, factor: bool = True):
    """Lower Cholesky factor of the symmetric ``m`` (``factor=False``: True), or None when a
    pivot is not positive.

    Blocked (leading block and Schur complement M₂₂ − L₂₁L₂₁ᵀ factorized recursively, L₂₁ from
    a triangular solve): the same inner products as the unblocked algorithm in another order;
    on one CPU thread faster than a single LAPACK call for n ≥ 512.
    """
    n = m.shape[0]
    if n <= leaf:
        lower, info = torch.linalg.cholesky_ex(m)
        return None if int(info) != 0 else (lower if factor else True)
    h = n // 2
    l11 = _cholesky(m[:h, :h], leaf)
    if l11 is None:
        return None
    l21 = torch.linalg.solve_triangular(l11, m[:h, h:], upper=False).mT
    l22 = _cholesky(m[h:, h:] - l21 @ l21.mT, leaf, factor)
    if l22 is None or not factor:
        return l22
    return torch.cat((torch.cat((l11, torch.zeros_like(l21.mT)), 1), torch.cat((l21, l22), 1)), 0)


def gram_eigenvalue_bound(a: Tensor, extremes: Optional[Tuple[float, float]] = None) -> float:
    r"""Guaranteed upper bound of the largest eigenvalue of the symmetric matrix ``a`` (n×n).

    A candidate c = 1 + μ is proved by factorizing M = cI − A by Cholesky (float32 for a
    float32 ``a``, float64 otherwise): if the factorization runs to completion, M + E = RᵀR ⪰ 0
    with a backward error ‖E‖₂ ≤ γ/(1 − γ)·tr(M), γ = (n + 1)u (Demmel 1989; Higham 2002,
    Thm. 10.5; taken twice as large here, for the blocked order of the operations), so
    λ_max(A) ≤ c + γ/(1 − γ)·tr(M) + (the rounding of forming M); the returned value includes
    both terms (for c − 1 ≈ 0.1 and n = 512 in float32 they add ≈ 3e-3).
    μ is the top Ritz value θ_max of A − I after 12 Lanczos steps plus 2% of the Ritz width
    θ_max − θ_min (``extremes`` = (θ_min, θ_max) if already computed by
    :func:`lanczos_extremes`); when the factorization fails the margin grows to 25% and 100%
    of the width, and the unconditional bound 1 + ‖A − I‖_F is returned last. Soundness never
    depends on the estimate. Cost: one n³/3 Cholesky (about one n×n×n product on one CPU
    thread: ~2 ms for n = 512) and 12 matrix–vector products, against n²·m for the Gram matrix
    of an n×m weight. The bound is for ``a`` as given: the rounding made when forming a Gram
    matrix is not included.
    """
    if a.dim() != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {tuple(a.shape)}")
    with torch.no_grad():
        dtype = torch.float32 if a.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.float64
        x = a.detach().to(dtype)
        n = x.shape[0]
        u = torch.finfo(dtype).eps / 2
        gamma = 2 * (n + 1) * u / (1.0 - 2 * (n + 1) * u)  # twice the textbook γ: blocked order
        diag_max = float(x.diagonal().abs().max())
        if not math.isfinite(diag_max):
            raise ValueError("gram_eigenvalue_bound: the matrix has non-finite entries")
        if extremes is None:
            s = x.clone()
            s.diagonal().sub_(1.0)
            extremes = lanczos_extremes(s)
            del s
        lo, hi = float(extremes[0]), float(extremes[1])
        if not (math.isfinite(lo) and math.isfinite(hi)):
            lo, hi = 0.0, 0.0
        width = max(hi - lo, 8.0 * n * u)
        for margin in (0.02, 0.25, 1.0):
            c = 1.0 + hi + margin * width
            m = x.neg()
            m.diagonal().add_(c)  # cI − A (the diagonal rounded once: covered by the last term)
            if _cholesky(m, factor=False):
                trace = float(m.diagonal().sum())
                return c + gamma / (1.0 - gamma) * max(trace, 0.0) + 4.0 * u * (c + diag_max)
        s = x.to(torch.float64, copy=True)
        s.diagonal().sub_(1.0)
        fro = float(torch.linalg.matrix_norm(s))
        return (1.0 + fro) * (1.0 + 4.0 * n * 2.0 ** -53)


def polar_step_gain(coefficients: Sequence[float], lam_max: float) -> float:
    r"""max over x ∈ [0, λ] of √x·|p(x)|, p(x) = k₀ + k₁x + k₂x²: a bound of ‖W p(A)‖₂ when A = WᵀW ⪯ λI.

    The singular values of W p(A) are s·|p(s²)| for the singular values s of W, so this is a
    guaranteed bound of the norm after one step of :func:`bjorck_step` (in exact
    arithmetic). g(x) = x·p(x)² has g'(x) = p(x)(k₀ + 3k₁x + 5k₂x²), so its maximum on
    [0, λ] is at λ or at a root of that quadratic: evaluated exactly, in closed form. For a
    Björck step (3/2, −1/2) and λ ≤ 4 the result is 1 (at x = 1): a Björck step never
    makes a singular value of a matrix with ‖W‖₂ ≤ 2 exceed 1.
    """
    k = [float(c) for c in coefficients] + [0.0] * (3 - len(coefficients))
    k0, k1, k2 = k[:3]
    lam = float(lam_max)
    if not lam >= 0.0:
        raise ValueError(f"lam_max must be >= 0, got {lam_max}")
    candidates = [lam]
    qa, qb, qc = 5.0 * k2, 3.0 * k1, k0  # roots of qa x² + qb x + qc
    if qa == 0.0:
        if qb != 0.0:
            candidates.append(-qc / qb)
    else:
        disc = qb * qb - 4.0 * qa * qc
        if disc >= 0.0:
            r = math.sqrt(disc)
            candidates += [(-qb - r) / (2.0 * qa), (-qb + r) / (2.0 * qa)]
    best = 0.0
    for x in candidates:
        if 0.0 <= x <= lam:
            best = max(best, x * (k0 + k1 * x + k2 * x * x) ** 2)
    return math.sqrt(best) * (1.0 + 1e-12)


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
            the Gram matrix the next step needs anyway), or the error it predicts after the
            step just taken (:func:`predicted_error`), is at most ``tol``; ``0`` runs all
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
        e = None
        if tol > 0:
            with torch.no_grad():
                eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
                e = float(torch.linalg.matrix_norm(a.detach() - eye).max())
                if e <= tol:
                    break
        w = bjorck_step(w, a, order=order)
        # ‖A − I‖_F ≥ ‖A − I‖₂, so the predicted error after this step is guaranteed (in exact
        # arithmetic); stopping on it avoids one more Gram product, and it is reachable even
        # where rounding keeps ‖A − I‖_F itself above tol (float32, large matrices)
        if e is not None and e < 1.0 and predicted_error(e, order) <= tol:
            break
    return w


# ---- retraction onto the Stiefel manifold (batched, no grad) ----------------------------------
def retract_semi_orthogonal_(w: Tensor, tol: Optional[float] = None, max_iterations: int = 30) -> int:
    """Replace ``w`` (..., m, n) in place by its (semi-)orthonormal polar factor; returns #steps.

    Computed in float64 (the matrices are small) with Björck steps on the smaller Gram side,
    stopping when ``‖WᴴW − I‖_F`` (a guaranteed bound of the spectral error) is ≤ ``tol``
    for every matrix of the batch; far from the manifold (‖WᴴW − I‖₂ possibly > 0.9, from
    min(‖·‖_F, ‖·‖_∞)) ``w`` is first divided by a guaranteed bound of its norm. Default tol: 1e-12 for float64, 1e-7 for float32 (below
    float32 resolution, so the stored value is orthonormal to float32 rounding).
    """
    if tol is None:
        tol = 1e-12 if w.dtype == torch.float64 else 1e-7
    with torch.no_grad():
        x = w.detach().to(torch.float64)
        eye = torch.eye(min(x.shape[-2:]), dtype=x.dtype, device=x.device)
        steps = 0
        for _ in range(max_iterations):
            a = gram(x)
            d = a - eye
            err = float(torch.linalg.matrix_norm(d).max())  # ‖A − I‖_F ≥ ‖A − I‖₂
            if not math.isfinite(err):
                raise ValueError("cannot orthonormalize a weight with non-finite values")
            if err <= tol:
                break
            if err > 0.9:  # ‖A − I‖₂ ≤ min(‖·‖_F, ‖·‖_∞); < 1 keeps every σ² in (0, 2): Björck converges
                spec = min(err, float(d.abs().sum(-1).amax()))
                if spec > 0.9:
                    x = x / gram_spectral_bound(x).to(x.dtype)[..., None, None]
                    a = gram(x)
            x = bjorck_step(x, a)
            steps += 1
        w.copy_(x.to(w.dtype))
    return steps
