r"""Curvature of decision boundaries near inputs.

Fawzi, Moosavi-Dezfooli, Frossard & Soatto, "Empirical study of the topology and geometry of
deep networks", CVPR 2018; Moosavi-Dezfooli, Fawzi, Uesato & Frossard, "Robustness via curvature
regularization, and vice versa", CVPR 2019.

All functions are pure functions of ``(model, x)``: the model maps a batch ``(B, *shape)``
to logits ``(B, C)`` and is used as given (put it in eval mode yourself; no parameter
``.grad`` is touched).  Inputs are flattened to ``d = prod(shape)`` coordinates.

Definitions
-----------
For classes ``i`` (the predicted one) and ``j``, ``F = f_i − f_j`` and the pairwise decision
boundary is ``{F = 0}``.  Near an input ``x`` we study the level set ``{z : F(z) = F(x)}``
through ``x`` (an approximation; use :func:`boundary_point` to move onto
``{F = 0}`` first).  With ``n = ∇F/‖∇F‖`` and ``P = I − n nᵀ`` (the tangent projector), the
normal curvature along a tangent ``v`` is ``κ(v) = vᵀ H_F v / (‖v‖² ‖∇F‖)`` and the **principal curvatures**
are the ``d − 1`` eigenvalues of ``P H_F P / ‖∇F‖`` restricted to the tangent space.
We compute them as the eigenvalues of ``Qᵀ H_F Q / ‖∇F‖`` with ``Q`` (d × (d−1)) an
orthonormal basis of ``n^⊥`` (a Householder reflection), so the spurious zero eigenvalue in
the normal direction never appears.

Sign convention: positive curvature means the boundary bends *toward* ``−∇F``, i.e. away
from class ``i``'s side: for ``F(x) = ‖x‖² − r²`` (class ``i`` outside a sphere) every
principal curvature is ``+1/r``.

**Average curvature** ``κ̄ = (1/(d−1)) Σ_l κ_l = (tr H_F − nᵀ H_F n) / ((d − 1) ‖∇F‖)``.
Goldman's (2005) mean-curvature formula ``(∇Fᵀ H ∇F − tr(H) ‖∇F‖²) / (2‖∇F‖³)`` is
the mean curvature of a *surface in R³* (two principal curvatures) with the opposite
orientation, i.e. ``−(d − 1)/2 · κ̄`` in ``d`` dimensions; we use the trace form above, which
is the mean of the principal curvatures in every dimension (the two differ by a negative
factor, so a detector threshold on one is a threshold on the other with the direction reversed).

Second derivatives
------------------
``h=None`` (default): exact Hessians; ``h > 0``: the central-difference Hessian of exact gradients
at scale ``h``, which is what a piecewise-linear network's curvature means
(:mod:`liplayers.analysis.hessians`, whose functions are importable from here).

Detector of perturbed inputs (Fawzi et al. 2018)
------------------------------------------------
:func:`curvature_score` ``= Σ_{j≠i} κ̄_j(x)`` with ``i`` the predicted class; the detector
labels an input as perturbed when the score exceeds a threshold (Fawzi et al. report natural
inputs to have negative and adversarially perturbed ones positive average curvature), and
:func:`estimate_original_label` proposes ``argmax_{j≠i} κ̄_j`` as the class before the attack.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..functional import random as _rng
# the derivatives live in .hessians; decision_gradient, hessian_vector_product and logit_hessians
# are importable from here as before
from .hessians import (Labels, _check_h, _check_inputs, _F, _grad_F, _hvp, _labels, _logits, _pair,
                       decision_gradient, hessian_vector_product, logit_hessians)

__all__ = [
    "decision_gradient",
    "hessian_vector_product",
    "logit_hessians",
    "principal_curvatures",
    "average_curvature",
    "curvature_score",
    "estimate_original_label",
    "boundary_point",
]


def _tangent_basis(n: Tensor) -> Tensor:
    """Orthonormal basis (…, d, d−1) of the orthogonal complement of unit vectors ``n`` (…, d).

    Householder reflection ``I − 2uuᵀ`` mapping ``n`` to ``±e₁``: its other ``d − 1`` columns.
    """
    d = n.shape[-1]
    e1 = torch.zeros_like(n)
    e1[..., 0] = 1.0
    s = torch.where(n[..., :1] >= 0, -1.0, 1.0).to(n.dtype)  # reflect n to −sign(n₀) e₁: no cancellation
    u = n - s * e1
    u = u / torch.linalg.vector_norm(u, dim=-1, keepdim=True)
    Hh = torch.eye(d, dtype=n.dtype, device=n.device) - 2 * u[..., :, None] * u[..., None, :]
    return Hh[..., :, 1:]


def _curvatures_from(J: Tensor, H: Tensor, i: Tensor, j: Tensor) -> Tuple[Tensor, Tensor]:
    """Principal curvatures (B, d−1) ascending and ‖∇F‖ (B,) from per-logit J, H (float64)."""
    B = J.shape[0]
    ar = torch.arange(B, device=J.device)
    gF = J[ar, i] - J[ar, j]
    HF = H[ar, i] - H[ar, j]
    gn = torch.linalg.vector_norm(gF, dim=-1)
    n = gF / gn.clamp_min(1e-300)[:, None]
    Q = _tangent_basis(n)
    G = Q.transpose(-1, -2) @ HF @ Q
    G = 0.5 * (G + G.transpose(-1, -2))
    kappa = torch.linalg.eigvalsh(G) / gn[:, None]
    return torch.where(gn[:, None] > 0, kappa, torch.full_like(kappa, float("nan"))), gn


def principal_curvatures(model: nn.Module, x: Tensor, label: Labels = None, other: Labels = None,
                         h: Optional[float] = None, chunk_size: int = 64) -> Tensor:
    """Principal curvatures of the level set of ``F = f_label − f_other`` through each input.

    Args:
        model: ``(B, *shape) → (B, C)`` logits.
        x: inputs ``(B, *shape)``; ``d = prod(shape)``.
        label: class ``i`` (default: predicted); ``other``: class ``j`` (default: runner-up).
        h: ``None`` for exact second derivatives, ``> 0`` for the scale-``h`` central
            difference (needed for piecewise-linear networks, see the module docstring).
        chunk_size: inputs processed at once (memory ``O(chunk·C·d²)``).

    Returns:
        ``(B, d − 1)`` float64, ascending, in inverse input units (``1/r`` for a sphere of
        radius ``r``); ``nan`` where ``∇F = 0`` (no level set).
    """
    _check_inputs(model, x)
    _check_h(h)
    i, j, _ = _pair(model, x, label, other)
    outs = []
    for s in range(0, x.shape[0], chunk_size):
        _, J, H = logit_hessians(model, x[s:s + chunk_size], h)
        outs.append(_curvatures_from(J, H, i[s:s + chunk_size], j[s:s + chunk_size])[0])
    return torch.cat(outs, 0)


def average_curvature(model: nn.Module, x: Tensor, label: Labels = None, h: Optional[float] = None,
                      chunk_size: int = 64, num_probes: Optional[int] = None,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """Average principal curvature ``κ̄_j`` of the boundary between ``label`` and every class ``j``.

    ``κ̄_j = (tr H_F − nᵀ H_F n) / ((d − 1)‖∇F‖)`` with ``F = f_label − f_j`` (module
    docstring; not Goldman's formula literally, which is the 3-D formula with the opposite
    sign).  ``label`` defaults to the predicted class.

    ``num_probes=None``: exact trace from the full (scale-``h``) Hessians.  ``num_probes=k``:
    Hutchinson estimate ``tr(P H_F P) ≈ mean_m (P z_m)ᵀ H_F (P z_m)`` with ``k`` Rademacher
    probes per class pair (unbiased; ``O(C·k)`` Hessian-vector products, no ``d²`` memory),
    for large inputs.

    Returns:
        ``(B, C)`` float64; the ``label`` column is ``nan``.
    """
    _check_inputs(model, x)
    h = _check_h(h)
    with torch.no_grad():
        out = _logits(model, x, x.shape[0])
    B, C = out.shape
    i = _labels(label, B, C, x.device, "label")
    if i is None:
        i = out.argmax(dim=1)
    d = x[0].numel()
    if d < 2:
        raise ValueError("average curvature needs inputs with at least 2 coordinates")
    res = torch.full((B, C), float("nan"), dtype=torch.float64, device=x.device)
    if num_probes is None:
        for s in range(0, B, chunk_size):
            sl = slice(s, s + chunk_size)
            _, J, H = logit_hessians(model, x[sl], h)
            ii = i[sl]
            ar = torch.arange(J.shape[0], device=x.device)
            gF = J[ar, ii][:, None, :] - J  # (b, C, d)
            HF = H[ar, ii][:, None] - H  # (b, C, d, d)
            gn = torch.linalg.vector_norm(gF, dim=-1)
            n = gF / gn.clamp_min(1e-300)[..., None]
            tr = HF.diagonal(dim1=-2, dim2=-1).sum(-1)
            nHn = torch.einsum("bcd,bcde,bce->bc", n, HF, n)
            kb = (tr - nHn) / ((d - 1) * gn)
            kb = torch.where(gn > 0, kb, torch.full_like(kb, float("nan")))
            kb[ar, ii] = float("nan")
            res[sl] = kb
        return res
    if isinstance(num_probes, bool) or not isinstance(num_probes, int) or num_probes < 1:
        raise ValueError(f"num_probes must be None or a positive int, got {num_probes!r}")
    for c in range(C):
        mask = i != c
        if not bool(mask.any()):
            continue
        jj = torch.full((B,), c, dtype=torch.int64, device=x.device)
        xs, ii, jj = x[mask], i[mask], jj[mask]
        b = xs.shape[0]
        _, g = _grad_F(model, xs, ii, jj)
        g = g.to(torch.float64)
        gn = torch.linalg.vector_norm(g, dim=-1)
        n = g / gn.clamp_min(1e-300)[:, None]
        zs = _rng.randint(0, 2, (num_probes, b, d), generator=generator, device=x.device).to(torch.float64) * 2 - 1
        pz = zs - (zs * n).sum(-1, keepdim=True) * n  # P z
        hv = _hvp(model, xs, pz.to(x.dtype), ii, jj, h).to(torch.float64)
        tr = (pz * hv).sum(-1).mean(0)
        kb = tr / ((d - 1) * gn)
        res[mask, c] = torch.where(gn > 0, kb, torch.full_like(kb, float("nan")))
    return res


def curvature_score(model: nn.Module, x: Tensor, h: Optional[float] = None, chunk_size: int = 64,
                    num_probes: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """Perturbed-input detector score ``Σ_{j≠i} κ̄_j(x)`` (B,), ``i`` the predicted class (Fawzi et al. 2018).

    Larger means "more likely perturbed" in Fawzi et al.'s reading.  Arguments as in
    :func:`average_curvature`.
    """
    kb = average_curvature(model, x, None, h, chunk_size, num_probes, generator)
    return torch.nan_to_num(kb, nan=0.0).sum(1)


def estimate_original_label(model: nn.Module, x: Tensor, h: Optional[float] = None, chunk_size: int = 64,
                            num_probes: Optional[int] = None, generator: Optional[torch.Generator] = None) -> Tensor:
    """``argmax_{j≠i} κ̄_j(x)`` (B,) int64: guess of the class before an attack (Fawzi et al. 2018)."""
    kb = average_curvature(model, x, None, h, chunk_size, num_probes, generator)
    return torch.nan_to_num(kb, nan=float("-inf")).argmax(1)


def boundary_point(model: nn.Module, x: Tensor, x_far: Tensor, label: Labels = None, other: Labels = None,
                   iterations: int = 40) -> Tuple[Tensor, Tensor]:
    """Point of ``{f_label = f_other}`` on each segment ``[x, x_far]`` by bisection.

    ``x``, ``x_far``: (B, ...) (e.g. ``x_far`` an adversarial example); ``label`` defaults to
    the prediction at ``x`` and ``other`` to the prediction at ``x_far`` where it differs,
    else the runner-up at ``x``.  Returns ``(z, found)``: ``z`` (B, ...) with ``F(z) ≥ 0`` on the
    ``x`` side within ``2^{−iterations}`` of the segment length, and ``found`` (B,) bool —
    ``False`` where ``F`` does not change sign on the segment (``z = x`` there).
    """
    _check_inputs(model, x)
    _check_inputs(model, x_far)
    if x_far.shape != x.shape:
        raise ValueError(f"x_far must have x's shape {tuple(x.shape)}, got {tuple(x_far.shape)}")
    B = x.shape[0]
    with torch.no_grad():
        o0 = _logits(model, x, B)
        o1 = _logits(model, x_far, B)
        C = o0.shape[1]
        i = _labels(label, B, C, x.device, "label")
        i = o0.argmax(1) if i is None else i
        j = _labels(other, B, C, x.device, "other")
        if j is None:
            p1 = o1.argmax(1)
            runner = o0.scatter(1, i[:, None], float("-inf")).argmax(1)
            j = torch.where(p1 != i, p1, runner)
        F0, F1 = _F(o0, i, j), _F(o1, i, j)
        found = (F0 > 0) & (F1 <= 0)
        lo = torch.zeros(B, dtype=x.dtype, device=x.device)
        hi = torch.ones(B, dtype=x.dtype, device=x.device)
        shape = (B,) + (1,) * (x.dim() - 1)
        for _ in range(iterations):
            mid = (lo + hi) / 2
            Fm = _F(_logits(model, x + mid.reshape(shape) * (x_far - x), B), i, j)
            pos = Fm > 0
            lo = torch.where(pos, mid, lo)
            hi = torch.where(pos, hi, mid)
        t = torch.where(found, lo, torch.zeros_like(lo))
        return (x + t.reshape(shape) * (x_far - x)).detach(), found
