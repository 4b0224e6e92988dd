r"""Spectrum of the pulled-back Fisher metric, the data rank, and Shen et al.'s largest-eigenvalue penalty.

Shi-Garrier, Bouaynaya & Delahaye, "Adversarial Robustness with Partial Isometry", Entropy 2024,
§2.3 and §3.2 (equation numbers below are theirs). For a classifier ``F: Rⁿ → Δ^m`` (softmax over ``C = m+1`` classes) the
Fisher information metric of the categorical distribution, pulled back to the input space, is

    G̃_x = J_xᵀ G_{F(x)} J_x                                          (eq. 3)

with ``J_x = ∂θ/∂x`` in any chart ``θ`` of the simplex and ``G`` the Fisher metric in that chart
(eq. 2 for ``θ = (p_1, …, p_m)``). In the square-root coordinates ``μ = 2√p`` the metric is the
Euclidean one of the radius-2 sphere, so ``G̃_x = J_μᵀ J_μ`` with ``J_μ = ∂μ/∂x`` (all ``C``
classes, no chart, no pole) — this is how everything here is computed
(:func:`liplayers.regularizers.sqrt_prob_jacobian`).

* **Spectrum.** The non-zero eigenvalues of the ``n × n`` matrix ``J_μᵀ J_μ`` are those of the
  ``C × C`` matrix ``J_μ J_μᵀ`` (the squared singular values of ``J_μ``): at most ``C`` numbers
  to compute whatever ``n``. Since ``‖μ‖ = 2``, ``μᵀ J_μ = 0``, so the rank is at most
  ``m = C − 1``.
* **Data rank.** ``D_x = (ker G̃_x)^⊥ = span{∇p_1, …, ∇p_C}`` (eq. 4) is the tangent space
  of the leaf of the data foliation through ``x``; its dimension is the number of non-zero
  eigenvalues, ``≤ min(C − 1, n)``. Its orthonormal basis is the right singular vectors of
  ``J_μ`` with non-zero singular values (:func:`fisher_eigendecomposition`).
* **Largest eigenvalue.** ``λ_max(G̃_x)`` is the squared Fisher–Rao speed of the prediction
  along the worst unit input direction: to first order
  ``d_FR(F(x), F(x + εv)) ≈ ε √(vᵀ G̃_x v) ≤ ε √λ_max``. Shen et al. (2019, "Defending
  against adversarial attacks by suppressing the largest eigenvalue of Fisher information
  matrix") penalize it; ISO (:mod:`liplayers.regularizers.iso`) instead
  equalizes all the non-zero eigenvalues.

``estimator="exact"`` uses the full Jacobian (``C`` reverse passes, vmapped); ``"power"`` runs
``n_power_iterations`` steps of power iteration on ``G̃_x`` matrix-free (one JVP and one VJP per step,
cost independent of ``C``) and returns the Rayleigh quotient ``‖J_μ v‖²`` with ``v`` detached —
a lower bound of ``λ_max`` whose gradient is the eigenvalue's gradient at convergence (Danskin).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jvp, vjp

from ..functional import random as _rng
from ..functional.geometry import sphere_coordinates
from ..losses._common import _check_reduction, _reduce
from ..utils import accepts_renamed_kwargs, renamed_attribute
from ._iso_common import _check_x
from .iso import sqrt_prob_jacobian

__all__ = [
    "fisher_spectrum",
    "fisher_eigendecomposition",
    "data_rank",
    "fisher_max_eigenvalue",
    "FisherEigenvalueLoss",
]


def fisher_spectrum(model: nn.Module, x: Tensor) -> Tensor:
    r"""Eigenvalues of the pulled-back Fisher metric ``G̃_x = J_μᵀJ_μ``, descending, shape ``(B, r)``.

    ``r = min(C, n)`` with ``C`` the number of classes and ``n = x[0].numel()``; the other
    ``n − r`` eigenvalues are exactly 0, and at least one of the ``r`` returned is 0 up to
    rounding when ``n ≥ C`` (rank ≤ ``C − 1``, see the module docstring). Units: squared
    Fisher–Rao length per squared input length. Differentiable w.r.t. the model parameters
    (``torch.linalg.eigvalsh`` of the ``C × C`` matrix ``J_μJ_μᵀ``). Shi-Garrier et al. 2024, eq. 3, §3.2.
    """
    _check_x(x)
    J = sqrt_prob_jacobian(model, x)  # (B, C, n)
    C, n = J.shape[1], J.shape[2]
    if C <= n:
        ev = torch.linalg.eigvalsh(J @ J.transpose(1, 2))
    else:
        ev = torch.linalg.eigvalsh(J.transpose(1, 2) @ J)
    return ev.flip(-1).clamp_min(0)


def fisher_eigendecomposition(model: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    r"""Eigenvalues ``(B, r)`` (descending) and orthonormal eigenvectors ``(B, n, r)`` of ``J_μᵀJ_μ``.

    From the thin SVD ``J_μ = U S Vᵀ``: eigenvalues ``S²``, eigenvectors the columns of ``V``
    (input space, ``n = x[0].numel()`` flattened features). The eigenvectors with non-zero
    eigenvalue form an orthonormal basis of ``D_x`` (Shi-Garrier et al. 2024 eq. 4); the top one is the input
    direction that moves the prediction fastest in Fisher–Rao distance. Not meant for
    backpropagation (SVD gradients are unstable at repeated singular values): the results are
    detached.
    """
    _check_x(x)
    with torch.no_grad():
        J = sqrt_prob_jacobian(model, x.detach())
        _, S, Vh = torch.linalg.svd(J, full_matrices=False)
    return S * S, Vh.transpose(1, 2)


def data_rank(model: nn.Module, x: Tensor, rtol: Optional[float] = None) -> Tensor:
    r"""Dimension of ``D_x = (ker G̃_x)^⊥`` per sample, ``(B,)`` int64 (Shi-Garrier et al. 2024 §2.3, eq. 4).

    The numerical rank of ``J_μ``, as ``torch.linalg.matrix_rank`` computes it: the number of
    singular values ``σ_i = √λ_i > rtol · σ_max`` (default ``rtol = C · eps(dtype)``). Always
    ``≤ min(C − 1, n)`` in exact arithmetic; a sample whose prediction is saturated (``p`` a
    vertex to float precision, ``J_μ = 0``) has rank 0.
    """
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not rtol >= 0):
        raise ValueError(f"rtol must be a non-negative number, got {rtol!r}")
    _check_x(x)
    with torch.no_grad():
        J = sqrt_prob_jacobian(model, x.detach())
    # singular values of J_μ directly (not √ of the eigenvalues of J_μJ_μᵀ, which squares the
    # condition number and leaves the null eigenvalue at ~√eps relative)
    sv = torch.linalg.svdvals(J)
    if rtol is None:
        rtol = J.shape[1] * torch.finfo(sv.dtype).eps
    top = sv[:, :1]
    return ((sv > rtol * top) & (top > 0)).sum(-1)


@accepts_renamed_kwargs({"iterations": "n_power_iterations"})
def fisher_max_eigenvalue(
    model: nn.Module,
    x: Tensor,
    estimator: str = "exact",
    n_power_iterations: int = 10,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Largest eigenvalue ``λ_max(J_μᵀJ_μ)`` of the pulled-back Fisher metric per sample, ``(B,)``.

    The quantity Shen et al. (2019) suppress (Shi-Garrier et al. 2024 §3.2). Differentiable w.r.t. the model
    parameters.

    Args:
        model: maps ``x`` (B, ...) to logits (B, C); samples must not interact.
        x: inputs (B, ...).
        estimator: ``"exact"`` (top eigenvalue of the ``C × C`` matrix ``J_μJ_μᵀ``; ``C``
            reverse passes) or ``"power"`` (``n_power_iterations`` matrix-free power steps on
            ``J_μᵀJ_μ``, each one JVP and one VJP, then the Rayleigh quotient ``‖J_μ v‖²``
            with ``v`` detached: a lower bound, equal to ``λ_max`` at convergence).
        n_power_iterations: power steps (``"power"`` only), ≥ 1.
        generator: for the random start vector of ``"power"``.
    """
    _check_x(x)
    if estimator == "exact":
        return fisher_spectrum(model, x)[:, 0]
    if estimator != "power":
        raise ValueError(f"estimator must be 'exact' or 'power', got {estimator!r}")
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 1:
        raise ValueError(f"n_power_iterations must be a positive int, got {n_power_iterations!r}")

    def mu_of(z: Tensor) -> Tensor:
        return sphere_coordinates(model(z), validate=False)

    B = x.shape[0]
    xd = x.detach()
    v = _rng.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        _, pull = vjp(mu_of, xd)
        for _ in range(n_power_iterations):
            v = v / v.reshape(B, -1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny).reshape(
                (B,) + (1,) * (x.dim() - 1))
            _, u = jvp(mu_of, (xd,), (v,))  # J_μ v, (B, C)
            (v,) = pull(u)  # J_μᵀ J_μ v
    v = v / v.reshape(B, -1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny).reshape(
        (B,) + (1,) * (x.dim() - 1))
    _, u = jvp(mu_of, (xd,), (v.detach(),))
    return (u * u).sum(-1)


class FisherEigenvalueLoss(nn.Module):
    r"""Shen et al.'s (2019) loss (Shi-Garrier et al. 2024 §3.2): ``loss = CE(F(x), y) + lam·λ_max(J_μᵀJ_μ)``.

    Args:
        lam: weight ``lam ≥ 0`` of the largest-eigenvalue penalty.
        estimator, n_power_iterations, generator: as in :func:`fisher_max_eigenvalue`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    ``forward(model, x, y) -> loss``. ``self.last_ce`` / ``self.last_eig`` hold the detached batch
    means of the two terms for logging. One extra forward for the cross-entropy logits.

    Shape: x (B, ...), y (B,) → scalar, or (B,) with ``reduction="none"``.
    """

    @accepts_renamed_kwargs({"eta": "lam", "iterations": "n_power_iterations"})
    def __init__(self, lam: float = 0.1, *, estimator: str = "exact", n_power_iterations: int = 10,
                 reduction: str = "mean", generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
            raise ValueError(f"lam must be a non-negative finite number, got {lam!r}")
        if estimator not in ("exact", "power"):
            raise ValueError(f"estimator must be 'exact' or 'power', got {estimator!r}")
        self.lam, self.estimator, self.n_power_iterations = float(lam), estimator, n_power_iterations
        self.reduction, self.generator = _check_reduction(reduction), generator
        self.last_ce: Optional[Tensor] = None
        self.last_eig: Optional[Tensor] = None

    eta = renamed_attribute("eta", "lam")
    iterations = renamed_attribute("iterations", "n_power_iterations")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        eig = fisher_max_eigenvalue(model, x, self.estimator, self.n_power_iterations, self.generator)
        ce = F.cross_entropy(model(x), y, reduction="none")
        self.last_ce, self.last_eig = ce.detach().mean(), eig.detach().mean()
        return _reduce(ce + self.lam * eig, self.reduction)
