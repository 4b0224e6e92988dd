r"""Euclidean projection of vectors (rows of a weight) onto the L1 ball.

For ``v ∈ Rⁿ`` and a radius ``r > 0`` the projection onto ``B₁(r) = {w : ‖w‖₁ ≤ r}`` is

    P(v) = v                                   if ‖v‖₁ ≤ r,
    P(v)_i = sign(v_i) · max(|v_i| − τ, 0)     otherwise,

where ``τ > 0`` is the unique root of the convex, decreasing, piecewise-linear function
``φ(τ) = Σ_i max(|v_i| − τ, 0) − r`` (soft thresholding; Duchi et al. 2008, Condat 2016).
A dense layer whose weight has every row in ``B₁(1)`` has ``‖W‖_{∞→∞} = max_i ‖w_i‖₁ ≤ 1``:
this is the L∞ weight constraint of Anil, Lucas & Grosse (2019); Condat (2016) gives a fast
algorithm for the projection.

Three ways to find ``τ`` (``method=``), all giving the same projection:

* ``"newton"`` (default): Newton's method on ``φ`` started from Condat's lower bound
  ``τ₀ = max((‖v‖₁ − r)/n, max|v| − r)`` — the fixed-point iteration of Michelot (1986)
  that is the second phase of Condat's algorithm,
  ``τ_{k+1} = (Σ_{|v_i|>τ_k} |v_i| − r) / #{i : |v_i| > τ_k}``.  Because ``φ`` is convex
  and decreasing, each step is the root of the tangent line, which lies below ``φ``, so the
  iterates increase monotonically to ``τ*`` and stop exactly (finitely many active sets).
  Each step is O(n) and fully vectorized over rows; a handful of steps suffices in practice
  (the expected cost is linear, as for Condat's algorithm), the worst case is n steps. Rows
  not converged after ``max_iterations`` steps are finished by the sort method.
* ``"sort"``: the classical O(n log n) algorithm: sort ``|v|`` decreasingly, take the last
  ``k`` with ``u_k > (Σ_{j≤k} u_j − r)/k``.  Vectorized; the reference and fallback.
* ``"condat"``: Condat's (2016) Algorithm (online filtering, then Michelot passes) written
  literally, row by row, in Python floats (float64).  O(n) expected operations but a Python
  loop: for testing and for small inputs only.

Gradient. Whatever the method, the active set ``A = {i : |v_i| > τ}`` is found without
gradient, then ``τ = (Σ_{i∈A} |v_i| − r)/|A|`` is recomputed differentiably, so autograd gives
the exact Jacobian of the projection wherever it is differentiable (almost everywhere):
``∂P_i/∂v_j = δ_ij − sign(v_i) sign(v_j)/|A|`` for ``i, j ∈ A``, 0 for ``i ∉ A``, and the
identity for rows already inside the ball.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch import Tensor

__all__ = ["project_l1_ball", "l1_ball_threshold"]

_METHODS = ("newton", "sort", "condat")


def _check(v: Tensor, radius: float, method: str) -> float:
    if not isinstance(v, Tensor) or not v.is_floating_point():
        raise TypeError(f"project_l1_ball expects a real floating-point tensor, got "
                        f"{type(v).__name__ if not isinstance(v, Tensor) else v.dtype}")
    if v.dim() == 0:
        raise ValueError("project_l1_ball expects at least a 1-D tensor (rows along `dim`)")
    if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not math.isfinite(radius) or radius <= 0:
        raise ValueError(f"radius must be a positive finite number, got {radius!r}")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    if not bool(torch.isfinite(v.detach()).all()):
        raise ValueError("project_l1_ball: the input contains non-finite values")
    return float(radius)


# ------------------------------------------------------------------------ thresholds (no grad)
def _tau_sort(a: Tensor, r: float) -> Tensor:
    """τ per row of a = |v| (R, n), rows assumed outside the ball."""
    u = torch.sort(a, dim=-1, descending=True).values
    css = u.cumsum(-1) - r
    k = torch.arange(1, a.shape[-1] + 1, device=a.device, dtype=a.dtype)
    cond = u * k > css  # u_k > (Σ_{j≤k} u_j − r)/k
    # the condition holds for k = 1..K and fails after: K = number of True entries
    K = cond.sum(-1, keepdim=True).clamp_min(1)
    return css.gather(-1, K - 1).squeeze(-1) / K.squeeze(-1).to(a.dtype)


def _tau_newton(a: Tensor, r: float, max_iterations: int) -> Tensor:
    n = a.shape[-1]
    tau = torch.maximum((a.sum(-1) - r) / n, a.amax(-1) - r)
    mask = a > tau[:, None]
    # filtering (as in Condat's first pass): τ only increases, so entries ≤ τ₀ never become
    # active again; keep each row's k largest entries, k = the largest active count.
    k = int(mask.sum(-1).max())
    if 4 * k < n:
        a = torch.topk(a, k, dim=-1, sorted=False).values
        mask = a > tau[:, None]
    zero = torch.zeros((), dtype=a.dtype, device=a.device)
    for _ in range(max_iterations):
        cnt = mask.sum(-1).clamp_min(1).to(a.dtype)
        new = torch.maximum((torch.where(mask, a, zero).sum(-1) - r) / cnt, tau)
        new_mask = a > new[:, None]
        tau = new
        if torch.equal(new_mask, mask):
            return tau
        mask = new_mask
    # not converged within max_iterations (adversarial inputs): finish with the sort method
    return _tau_sort(a, r)


def _condat_tau_row(y: List[float], a: float) -> float:
    """Condat (2016), projection of y onto the simplex {x ≥ 0, Σx = a}: the threshold τ."""
    v = [y[0]]
    v_tilde: List[float] = []
    rho = y[0] - a
    for yn in y[1:]:  # step 2: online filtering
        if yn > rho:
            rho = rho + (yn - rho) / (len(v) + 1)
            if rho > yn - a:
                v.append(yn)
            else:
                v_tilde.extend(v)
                v = [yn]
                rho = yn - a
    for yt in v_tilde:  # step 3
        if yt > rho:
            v.append(yt)
            rho = rho + (yt - rho) / len(v)
    while True:  # step 4: Michelot passes
        changed = False
        keep: List[float] = []
        for i, yi in enumerate(v):
            if yi <= rho:
                remaining = len(v) - i - 1 + len(keep)
                if remaining > 0:
                    rho = rho + (rho - yi) / remaining
                changed = True
            else:
                keep.append(yi)
        v = keep
        if not changed:
            break
    return rho


def _tau_condat(a: Tensor, r: float) -> Tensor:
    rows = a.detach().to("cpu", torch.float64).tolist()
    return torch.tensor([_condat_tau_row(row, r) for row in rows], dtype=a.dtype, device=a.device)


def _as_rows(v: Tensor, dim: int) -> Tensor:
    moved = v.movedim(dim, -1)
    return moved.reshape(-1, moved.shape[-1])


def _threshold_rows(a: Tensor, r: float, method: str, max_iterations: int) -> Tensor:
    """τ per row of a = |v| (R, n) (0 for rows inside the ball), without gradient."""
    with torch.no_grad():
        outside = a.sum(-1) > r
        tau = torch.zeros(a.shape[0], dtype=a.dtype, device=a.device)
        if not bool(outside.any()):
            return tau
        ao = a[outside]
        if method == "sort":
            t = _tau_sort(ao, r)
        elif method == "newton":
            t = _tau_newton(ao, r, max_iterations)
        else:
            t = _tau_condat(ao, r)
        tau[outside] = t.clamp_min(0)
        return tau


def l1_ball_threshold(v: Tensor, radius: float = 1.0, dim: int = -1, method: str = "newton",
                      max_iterations: int = 64) -> Tensor:
    """Soft threshold ``τ ≥ 0`` of each row's projection onto ``B₁(radius)`` (0 if inside).

    Shape: ``v`` with ``dim`` removed. No gradient. See the module docstring for the methods.
    """
    r = _check(v, radius, method)
    a = _as_rows(v.detach(), dim).abs()
    tau = _threshold_rows(a, r, method, max_iterations)
    moved_shape = v.movedim(dim, -1).shape[:-1]
    return tau.reshape(moved_shape)


def project_l1_ball(v: Tensor, radius: float = 1.0, dim: int = -1, method: str = "newton",
                    max_iterations: int = 64) -> Tensor:
    r"""Euclidean projection of every slice of ``v`` along ``dim`` onto the L1 ball of ``radius``.

    Args:
        v: real floating tensor of any shape; each slice along ``dim`` (a row of a weight for
            ``dim=-1``) is projected independently ("batched over rows").
        radius: ``r > 0``; after projection ``‖row‖₁ ≤ r`` (to floating-point rounding, a few
            ulps; certificates must use the measured norm, e.g.
            :meth:`liplayers.nn.linf_linear.LInfLinear.linf_lipschitz_bound`).
        dim: the dimension holding the vectors to project.
        method: ``"newton"`` (default, vectorized Michelot/Newton iterations from Condat's lower
            bound), ``"sort"`` (O(n log n), vectorized) or ``"condat"`` (Condat 2016 literally,
            a Python loop per row; reference).
        max_iterations: cap on Newton steps before falling back to ``"sort"``.

    Returns:
        Tensor of ``v``'s shape and dtype. Rows inside the ball are returned unchanged.
        Differentiable with the exact almost-everywhere Jacobian (module docstring).

    The maths: L∞-constrained weights of Anil, Lucas & Grosse (2019); projection of Duchi et al.
    (2008) and Condat (2016).
    """
    r = _check(v, radius, method)
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise ValueError(f"max_iterations must be a positive int, got {max_iterations!r}")
    moved = v.movedim(dim, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    a = rows.abs()
    tau = _threshold_rows(a.detach(), r, method, max_iterations)
    outside = tau > 0
    with torch.no_grad():
        mask = (a > tau[:, None]) & outside[:, None]
        cnt = mask.sum(-1).clamp_min(1).to(a.dtype)
    # differentiable threshold from the active set: τ = (Σ_A |v_i| − r)/|A|
    tau_g = torch.where(outside, ((a * mask).sum(-1) - r) / cnt, torch.zeros_like(cnt))
    shrunk = torch.sign(rows) * torch.clamp(a - tau_g[:, None], min=0)
    out = torch.where(outside[:, None], shrunk, rows)
    return out.reshape(moved.shape).movedim(-1, dim)
