r"""ISO: partial-isometry regularization in the Fisher information metric.

Shi-Garrier, Bouaynaya & Delahaye, "Adversarial Robustness with Partial Isometry", Entropy 2024;
equation numbers below are those of that paper.

Coordinate-free statement (what is implemented)
-----------------------------------------------
Let ``F`` be the model (softmax of the logits), ``μ = 2√p ∈ R^{m+1}`` its square-root
coordinates with **all** ``m+1`` classes kept, and ``J_μ = ∂μ/∂x`` of shape
``(m+1) × n`` (``n`` = number of input features).  On the sphere ``‖μ‖ = 2`` the Fisher
metric is the Euclidean metric (eq. 11), so the pull-back of the Fisher metric to
the input space is ``G̃ = J_μᵀ J_μ`` (eq. 3) — no coordinate is dropped and
nothing blows up.  Since ``‖μ‖² = 4`` is constant, ``μᵀ J_μ = 0``: the rows of ``J_μ`` span
(a subspace of) the tangent space ``T_μ = μ^⊥`` whose orthogonal projector is
``P_μ = I − μμᵀ/4``.

The partial-isometry condition with length factor ``K`` — "the differential multiplies
Euclidean lengths by ``K`` on ``(ker J_μ)^⊥``" (eq. 7 with lengths, as used in
eq. 13) — is::

    J_μ J_μᵀ = K² · P_μ                                             (★)

equivalently: ``G̃`` has exactly ``m`` non-zero eigenvalues, all equal to ``K²``
(eq. 9).  The regularizer measures the deviation from (★)::

    α(x, F) = ε² · ‖ J_μ J_μᵀ − K² P_μ ‖_F                           (this module)

with the paper's ``ε²`` prefactor (which compensates the ``1/ε²`` of ``K²``, after eq. 14).
``α ≥ 0`` and ``α = 0`` iff (★) holds.  Default ``K = δ_m/ε`` with
``δ_m = 2 arccos(1/√(m+1))`` (:func:`liplayers.functional.geometry.delta_m`, the paper's constant;
:func:`liplayers.functional.geometry.max_boundary_distance` ``= π/2`` is the distance to the
argmax decision boundary, pass ``scale=(π/2)/ε`` to use it).

Relation to eqs. 12–15 of the paper
-----------------------------------
The paper writes the condition in stereographic coordinates
``t = 2μ_{1:m}/(2 − μ_{m+1})`` where ``g = λ(t)² Σ dt_i²`` with
``λ = 2/(1 + ‖t/2‖²)`` (eq. 12).  Writing ``J̃ = ∂t/∂x`` and ``R`` for the isometry
``T_μ → R^m`` given by ``dt = R dμ / λ``, one gets ``J̃J̃ᵀ = R (J_μJ_μᵀ) Rᵀ / λ²``, so (★)
is ``J̃J̃ᵀ = (K/λ)² I_m`` — the first display after eq. 12 — and since
``1 + ‖t/2‖² = 2/(1 − √θ_{m+1})`` this is::

    J̃J̃ᵀ = K² / (1 − √θ_{m+1})² · I_m.                             (13, corrected)

The printed eq. 13, ``K² θ_{m+1} / (2√θ_{m+1} − ‖θ_{1:m}‖₁)² · I_m``, does not follow from
eq. 12 (by the identity above).  With the corrected right-hand side the paper's eq. 14 equals::

    α_paper = ε² ‖J̃J̃ᵀ − (K/λ)² I_m‖_F = α / (1 − √θ_{m+1})²,

i.e. the paper's α is ours times the conformal weight ``1/(1 − √θ_{m+1})²``, which depends on
the arbitrary choice of the dropped class and is unbounded when that class is predicted
with confidence (the pole of the projection).  We drop that weight: ``α`` is invariant under
relabelling the classes.  :func:`iso_penalty_stereographic` reproduces the paper's form
(corrected or as printed) for comparison.

Estimators
----------
* ``estimator="exact"``: ``J_μ`` by reverse mode, ``torch.func.jacrev`` (vmapped over the
  ``m+1`` output cotangents — no Python loop), applied to ``Σ_b μ(x)_b`` so one call gives
  every sample's Jacobian.  Cost ≈ ``m+1`` backward passes, plus their backward in training.
* ``estimator="randomized"``: ``k = num_probes ≥ 2`` forward-mode JVPs
  ``u_i = J_μ v_i`` (``torch.func.jvp`` vmapped over the probes, so the primal pass is shared)
  with independent probes ``E[v vᵀ] = I`` (Rademacher by default, or Gaussian).  Then
  ``E[u_i u_iᵀ] = J_μJ_μᵀ`` (unbiased for the pulled-back metric) and, writing
  ``C = K² P_μ``, the U-statistic::

      U = mean_{i≠j} (u_iᵀu_j)² − (2/k) Σ_i u_iᵀ C u_i + ‖C‖_F²

  is an **unbiased** estimator of ``‖J_μJ_μᵀ − C‖_F²`` (``E[(u_iᵀu_j)²] = ‖J_μJ_μᵀ‖_F²``
  for independent ``i ≠ j``; ``E[u_iᵀCu_i] = ⟨C, J_μJ_μᵀ⟩``).  Hence with ``squared=True``
  the randomized ``ε⁴·U`` is an unbiased estimate of the exact ``α²`` and its parameter
  gradient is an unbiased estimate of ``∇α²`` (the probes do not depend on the
  parameters): use ``squared=True`` for unbiased stochastic training.  ``U`` may be
  negative for an individual draw.  With ``squared=False`` the randomized value is
  ``ε²·√max(U, 0)``: consistent as ``k → ∞`` but **not** unbiased (Jensen).
  Cost ≈ ``1 + k`` forward passes plus their backward, independent of the number of classes.
* ``deviation="gaussian"`` measures ``A = J_μJ_μᵀ − K²P_μ`` by
  ``Q(A) = E_g[(gᵀAg)²] = (tr A)² + 2‖A‖²_F`` (``g ~ N(0, I_{m+1})``; ``gᵀ J_μJ_μᵀ g`` is
  ``‖J_μᵀg‖²``, so ``Q`` is the mean squared error of the length condition over Gaussian
  output directions).  Since ``rank A ≤ m``, ``2‖A‖²_F ≤ Q ≤ (m+2)‖A‖²_F``: the same
  minimizers as the Frobenius form.  Its square needs only **one** probe: for Gaussian
  ``v``, ``u = J_μv ~ N(0, M)`` with ``M = J_μJ_μᵀ``, and
  ``E‖u‖⁴ = (tr M)² + 2‖M‖²_F`` gives the unbiased single-probe estimator
  ``‖u‖⁴ − 2 tr C ‖u‖² − 4 uᵀCu + (tr C)² + 2‖C‖²_F`` of ``Q`` (averaged over
  ``k ≥ 1`` probes).  One JVP (no vmap) is the cheapest training step of all the variants.

Both estimators (like :mod:`torch.func` in general) assume the model treats samples
independently (no batch-statistics coupling such as BatchNorm in training mode).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.geometry import delta_m, sphere_coordinates
from ..utils import accepts_renamed_kwargs
from ._iso_common import (_check_estimator, _check_int, _check_logits, _check_positive, _check_x, _gram_terms,
                          _jvp_probes as _probe_images, _output_jacobian, _safe_sqrt, _ScheduledISO, iso_schedule)

__all__ = [
    "sqrt_prob_jacobian",
    "pullback_fisher_metric",
    "iso_penalty",
    "iso_penalty_stereographic",
    "iso_schedule",
    "ISOLoss",
]

_RENAMED = {"epsilon": "eps"}


def _mu(logits: Tensor) -> Tensor:
    return sphere_coordinates(logits, validate=False)


def _scale(eps: float, scale: Optional[float], num_classes: int) -> float:
    eps = _check_positive("eps", eps)
    if scale is None:
        return delta_m(num_classes) / eps
    return _check_positive("scale", scale)


def sqrt_prob_jacobian(model: nn.Module, x: Tensor, *, return_logits: bool = False):
    r"""Exact input Jacobian ``J_μ = ∂(2√p)/∂x`` per sample, shape ``(B, C, n)``, n = x[0].numel().

    Computed with ``torch.func.jacrev`` of ``Σ_b μ(x)_b`` (one reverse pass per class,
    vmapped).  Differentiable w.r.t. the model parameters.  With ``return_logits=True``
    returns ``(J, logits)``.
    """
    J, logits = _output_jacobian(model, x, _mu)
    return (J, logits) if return_logits else J


def pullback_fisher_metric(model: nn.Module, x: Tensor) -> Tensor:
    """Pull-back of the Fisher metric ``G̃ = J_μᵀ J_μ`` per sample, shape ``(B, n, n)`` (Shi-Garrier et al. 2024 eq. 3)."""
    J = sqrt_prob_jacobian(model, x)
    return J.transpose(1, 2) @ J


def _target(mu: Tensor, K: float) -> Tensor:
    """C = K² (I − μμᵀ/4), shape (B, C, C)."""
    eye = torch.eye(mu.shape[1], dtype=mu.dtype, device=mu.device)
    return K * K * (eye - mu[:, :, None] * mu[:, None, :] / 4)


def _jvp_probes(model, x, k, probe, generator):
    """u_i = J_μ v_i for k independent probes: returns (mu (B,C), u (k,B,C), logits (B,C))."""
    return _probe_images(model, x, k, probe, generator, _mu)


def _target_traces(mu: Tensor, K: float):
    """tr C and ||C||_F^2 for C = K^2 (I - mu mu^T/4): (K^2 m, K^4 m) up to rounding; (B,) each."""
    s = (mu * mu).sum(1) / 4  # = 1 up to rounding
    n = mu.shape[1]
    return K * K * (n - s), K ** 4 * (n - 2 * s + s * s)


def _u_statistic(mu: Tensor, u: Tensor, K: float) -> Tensor:
    """Unbiased estimate of ||J J^T - C||_F^2 from u (k>=2, B, C), any probes with E[vv^T]=I; (B,)."""
    k = u.shape[0]
    _, c_norm2 = _target_traces(mu, K)
    mean_off, diag = _gram_terms(u)  # diag (B, k) = |u_i|^2
    muu = torch.einsum("bc,ibc->bi", mu, u)  # (B, k), = 0 analytically
    uCu = K * K * (diag - muu.pow(2) / 4)  # u_i^T C u_i
    return mean_off - (2.0 / k) * uCu.sum(1) + c_norm2


def _gaussian_moment(mu: Tensor, u: Tensor, K: float) -> Tensor:
    """Unbiased estimate of (tr A)^2 + 2||A||_F^2, A = J J^T - C, from Gaussian-probe images u (k>=1, B, C).

    For u ~ N(0, M): E|u|^4 = (tr M)^2 + 2||M||_F^2, E|u|^2 = tr M, E[u^T C u] = <C, M>, hence
    E[|u|^4 - 2 trC |u|^2 - 4 u^T C u] + (trC)^2 + 2||C||_F^2 = (tr A)^2 + 2||A||_F^2.
    """
    trC, c_norm2 = _target_traces(mu, K)
    n2 = u.pow(2).sum(-1)  # (k, B)
    muu = torch.einsum("bc,ibc->ib", mu, u)
    uCu = K * K * (n2 - muu.pow(2) / 4)
    q = n2.pow(2) - 2 * trC * n2 - 4 * uCu
    return q.mean(0) + trC * trC + 2 * c_norm2


def _iso(model, x, eps, scale, estimator, num_probes, generator, squared, probe, deviation="frobenius"):
    _check_x(x)
    _check_positive("eps", eps)
    if deviation not in ("frobenius", "gaussian"):
        raise ValueError(f"deviation must be 'frobenius' or 'gaussian', got {deviation!r}")
    if estimator == "exact":
        J, logits = sqrt_prob_jacobian(model, x, return_logits=True)
        K = _scale(eps, scale, logits.shape[1])
        mu = _mu(logits)
        A = J @ J.transpose(1, 2) - _target(mu, K)
        sq = (A * A).sum((1, 2))
        if deviation == "gaussian":
            sq = torch.diagonal(A, dim1=1, dim2=2).sum(1).pow(2) + 2 * sq
    elif estimator == "randomized":
        if probe is None:
            probe = "rademacher" if deviation == "frobenius" else "gaussian"
        if deviation == "frobenius":
            _check_int("num_probes (the unbiased U-statistic needs two independent probes)", num_probes, 2)
        else:
            _check_int("num_probes", num_probes, 1)
            if probe != "gaussian":
                raise ValueError("deviation='gaussian' needs probe='gaussian' (its unbiased estimator uses "
                                 "the Gaussian fourth-moment identity)")
        mu, u, logits = _jvp_probes(model, x, num_probes, probe, generator)
        _check_logits(logits, x.shape[0])
        K = _scale(eps, scale, logits.shape[1])
        sq = _u_statistic(mu, u, K) if deviation == "frobenius" else _gaussian_moment(mu, u, K)
    else:
        _check_estimator(estimator)
    eps2 = float(eps) ** 2
    if squared:
        return eps2 * eps2 * sq, logits
    return eps2 * _safe_sqrt(sq), logits


@accepts_renamed_kwargs(_RENAMED)
def iso_penalty(
    model: nn.Module,
    x: Tensor,
    eps: float,
    scale: Optional[float] = None,
    estimator: str = "exact",
    num_probes: int = 2,
    generator: Optional[torch.Generator] = None,
    *,
    squared: bool = False,
    deviation: str = "frobenius",
    probe: Optional[str] = None,
) -> Tensor:
    r"""ISO partial-isometry penalty ``α(x, F) = ε²‖J_μJ_μᵀ − K²(I − μμᵀ/4)‖_F`` per sample, ``(B,)``.

    See the module docstring for the derivation and the relation to eq. 14 of Shi-Garrier et al. 2024.

    Args:
        model: maps ``x`` (B, ...) to logits (B, m+1); samples must not interact.
        x: inputs (B, ...); the Jacobian is taken w.r.t. all features (``n = x[0].numel()``).
        eps: the budget ``ε`` (> 0), a radius in input units; sets the prefactor ``ε²`` and the
            default scale.
        scale: the length factor ``K`` (> 0).  Default ``δ_m/ε`` with Shi-Garrier et al.'s
            ``δ_m = 2 arccos(1/√(m+1))`` (:func:`liplayers.functional.geometry.delta_m`).
        estimator: ``"exact"`` (jacrev) or ``"randomized"`` (``num_probes`` JVPs).
        num_probes: number of probes ``k ≥ 2`` for the randomized estimator.
        generator: :class:`torch.Generator` for the probes (determinism).
        squared: return ``α²`` instead of ``α``.  The randomized estimate of ``α²`` is
            unbiased (may be negative for one draw); that of ``α`` is only consistent.
        deviation: how the deviation ``A = J_μJ_μᵀ − K²P_μ`` is measured:
            ``"frobenius"`` (default, Shi-Garrier et al. 2024 eq. 14): ``α = ε²‖A‖_F``;
            ``"gaussian"``: ``α = ε²·(E_g[(gᵀAg)²])^{1/2} = ε²·((tr A)² + 2‖A‖²_F)^{1/2}``
            with ``g ~ N(0, I_{m+1})`` — an equivalent norm
            (``√2‖A‖_F ≤ · ≤ √(m+2)‖A‖_F``, zero iff ``A = 0``) whose square has an
            unbiased estimator from a **single** Gaussian JVP (``num_probes ≥ 1``), the
            cheapest option (see the module docstring).
        probe: ``"rademacher"`` or ``"gaussian"`` (both ``E[vvᵀ] = I``); default Rademacher
            for ``"frobenius"`` (lower variance), Gaussian (required) for ``"gaussian"``.

    Returns:
        Tensor ``(B,)``, differentiable w.r.t. the model parameters.
    """
    return _iso(model, x, eps, scale, estimator, num_probes, generator, squared, probe, deviation)[0]


@accepts_renamed_kwargs(_RENAMED)
def iso_penalty_stereographic(
    model: nn.Module,
    x: Tensor,
    eps: float,
    scale: Optional[float] = None,
    *,
    printed_eq13: bool = False,
) -> Tensor:
    r"""ISO penalty of Shi-Garrier et al. 2024 (eq. 14) in their stereographic coordinates (exact Jacobian), ``(B,)``.

    ``ε²‖J̃J̃ᵀ − c(θ) I_m‖_F`` with ``J̃ = ∂t/∂x``, ``t`` from
    :func:`liplayers.functional.geometry.stereographic_coordinates` (last class dropped) and
    ``c = K²/(1 − √θ_{m+1})²`` (eq. 13 corrected, default) or, with ``printed_eq13=True``,
    ``c = K² θ_{m+1}/(2√θ_{m+1} − ‖θ_{1:m}‖₁)²`` as printed.  With the corrected constant this
    equals :func:`iso_penalty` ``/ (1 − √θ_{m+1})²``.  For reproducing/testing the paper's formulation only;
    it blows up when the last class is confidently predicted.
    """
    def stereographic(logits: Tensor) -> Tensor:
        mu = _mu(logits)
        return 2.0 * mu[:, :-1] / (2.0 - mu[:, -1:])

    Jt, logits = _output_jacobian(model, x, stereographic)  # (B, m, n)
    m = logits.shape[1] - 1
    K = _scale(eps, scale, m + 1)
    p = torch.softmax(logits, dim=-1)
    last = p[:, -1]
    if printed_eq13:
        c = K * K * last / (2 * last.sqrt() - p[:, :-1].sum(-1)) ** 2
    else:
        c = K * K / (1 - last.sqrt()) ** 2
    eye = torch.eye(m, dtype=x.dtype, device=x.device)
    D = Jt @ Jt.transpose(1, 2) - c[:, None, None] * eye
    return float(eps) ** 2 * torch.linalg.matrix_norm(D)


# --------------------------------------------------------------------------- loss
class ISOLoss(_ScheduledISO):
    r"""ISO's loss (Shi-Garrier et al. 2024 eq. 15): ``loss = (1 − lam)·CE(F(x), y) + lam·α(x, F)``.

    ``lam`` (the paper's ``η``) is fixed, or follows :func:`iso_schedule`; ``α`` is
    :func:`iso_penalty`.

    Args:
        eps, scale, estimator, num_probes, squared, deviation, probe: as in :func:`iso_penalty`.
        lam: fixed weight ``lam ∈ [0, 1]``; if ``None`` (default) ``lam`` follows the geometric
            schedule from ``lam_min`` to ``lam_max`` over ``num_epochs`` — call :meth:`set_epoch`
            at the start of each epoch (0-based).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        generator: :class:`torch.Generator` for the randomized probes.

    ``forward(model, x, y) -> loss``.  The logits for the cross-entropy come from the same
    pass as the Jacobian (no extra forward).  The last values are kept in
    ``self.last_ce`` / ``self.last_alpha`` (detached, batch means) for logging.

    Shape: x (B, ...), y (B,) → scalar, or (B,) with ``reduction="none"``.
    """

    @accepts_renamed_kwargs({"epsilon": "eps", "eta": "lam", "eta_min": "lam_min", "eta_max": "lam_max"})
    def __init__(
        self,
        eps: float,
        scale: Optional[float] = None,
        *,
        lam: Optional[float] = None,
        lam_min: float = 0.002,
        lam_max: float = 0.006,
        num_epochs: int = 30,
        estimator: str = "exact",
        num_probes: int = 2,
        squared: bool = False,
        deviation: str = "frobenius",
        probe: Optional[str] = None,
        reduction: str = "mean",
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__(eps, scale, lam, lam_min, lam_max, num_epochs, estimator, reduction)
        if deviation not in ("frobenius", "gaussian"):
            raise ValueError(f"deviation must be 'frobenius' or 'gaussian', got {deviation!r}")
        self.num_probes, self.squared, self.probe, self.deviation = num_probes, squared, probe, deviation
        self.generator = generator

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        alpha, logits = _iso(model, x, self.eps, self.scale, self.estimator, self.num_probes,
                             self.generator, self.squared, self.probe, self.deviation)
        return self._combine(F.cross_entropy(logits, y, reduction="none"), alpha)
