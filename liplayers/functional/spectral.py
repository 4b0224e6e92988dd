"""Spectral-norm estimates (power iteration) and guaranteed upper bounds (Gram iteration).

Power iteration gives a *lower* bound of the largest singular value (an estimate that
converges from below); Gram iteration gives a *guaranteed upper* bound. Certificates must
only ever use the latter (or an exact SVD).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from ..utils import accepts_renamed_kwargs
from . import random as _rng

__all__ = ["power_iteration", "gram_spectral_bound", "spectral_norm_exact"]


def _check_matrix(w: Tensor, name: str = "w") -> None:
    if w.dim() < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (..., m, n), got shape {tuple(w.shape)}")
    if not torch.isfinite(w).all():
        raise ValueError(f"{name} contains non-finite values (NaN or Inf)")


@accepts_renamed_kwargs({"iterations": "n_power_iterations"})
def power_iteration(
    w: Tensor,
    u: Optional[Tensor] = None,
    n_power_iterations: int = 10,
    tol: float = 0.0,
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Estimate the largest singular value of ``w`` by power iteration on ``wᵀw``.

    Args:
        w: matrix (m, n) or batch (..., m, n). Real or complex.
        u: left singular-vector estimate (..., m) to start from (persistent state); random if None.
        n_power_iterations: maximum number of iterations (each = one product with w and one with wᴴ).
        tol: stop early when the relative change of σ is below ``tol`` (0 = run all iterations).
        generator: random generator for the initial vector.

    Returns:
        ``(sigma, u, v)`` with ``sigma`` shape (...,), ``u`` (..., m), ``v`` (..., n), all detached,
        such that ``sigma = uᴴ w v``. ``sigma`` is a **lower bound** of ‖w‖₂ (up to rounding): never
        use it for a certificate.
    """
    _check_matrix(w)
    with torch.no_grad():
        w = w.detach()
        m = w.shape[-2]
        if u is None:
            u = _rng.randn(w.shape[:-1], dtype=w.dtype, device=w.device, generator=generator)
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(u.real.dtype).tiny)
        sigma = torch.zeros(w.shape[:-2], dtype=w.real.dtype, device=w.device)
        v = None
        for _ in range(max(1, n_power_iterations)):
            v = (w.mH @ u.unsqueeze(-1)).squeeze(-1)
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.real.dtype).tiny)
            wu = (w @ v.unsqueeze(-1)).squeeze(-1)
            new_sigma = wu.norm(dim=-1)
            u = wu / new_sigma.unsqueeze(-1).clamp_min(torch.finfo(wu.real.dtype).tiny)
            done = tol > 0 and bool(((new_sigma - sigma).abs() <= tol * new_sigma).all())
            sigma = new_sigma
            if done:
                break
        del m
    return sigma, u, v


def gram_spectral_bound(w: Tensor, iterations: int = 6) -> Tensor:
    """Guaranteed upper bound of the spectral norm ‖w‖₂ by Gram iteration.

    With G₀ = w and G_{t+1} = G_tᴴ G_t, σ₁(w)^(2^t) = σ₁(G_t) ≤ ‖G_t‖_F, hence
    ``‖w‖₂ ≤ ‖G_t‖_F^(1/2^t)``; the bound tightens doubly exponentially with t (Delattre et
    al., 2023). Each step is rescaled by its Frobenius norm to avoid overflow, the scales being
    accumulated in log space. Computed in float64 (complex128 for complex input) whatever the
    input dtype, and multiplied by ``1 + 1e-9`` to absorb the rounding of that computation.

    Args:
        w: (..., m, n) real or complex.
        iterations: number of Gram steps t (cost: t products of the smaller side).

    Returns:
        Tensor of shape (...,) (float64), an upper bound of the largest singular value.
    """
    _check_matrix(w)
    with torch.no_grad():
        g = w.detach().to(torch.complex128 if w.is_complex() else torch.float64)
        if g.shape[-2] < g.shape[-1]:  # work on the smaller Gram side
            g = g.mH
        log_scale = torch.zeros(g.shape[:-2], dtype=torch.float64, device=g.device)
        for t in range(iterations):
            fro = torch.linalg.matrix_norm(g).clamp_min(1e-300)
            g = g / fro[..., None, None]
            # ‖w‖ ≤ (fro_t · ‖G'_t‖)^(1/2^t) accumulated: log bound = Σ log(fro_t) / 2^t
            log_scale = log_scale + torch.log(fro) / (2.0 ** t)
            g = g.mH @ g
        fro = torch.linalg.matrix_norm(g).clamp_min(1e-300)
        log_bound = log_scale + torch.log(fro) / (2.0 ** iterations)
        return torch.exp(log_bound) * (1.0 + 1e-9)


def spectral_norm_exact(w: Tensor) -> Tensor:
    """Largest singular value by a float64 SVD, times ``1 + 1e-9`` to cover its rounding.

    Exact up to that margin for dense matrices; shape (...,), float64.
    """
    _check_matrix(w)
    with torch.no_grad():
        g = w.detach().to(torch.complex128 if w.is_complex() else torch.float64)
        return torch.linalg.matrix_norm(g, ord=2) * (1.0 + 1e-9)
