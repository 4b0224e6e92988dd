r"""Guaranteed Lipschitz upper bounds of a whole network, and an empirical lower bound.

* :func:`lipschitz_bound` — a **guaranteed** upper bound of the L2→L2 Lipschitz constant of
  ``model`` exactly as it runs in eval mode, computed from the weights it actually uses now
  (after the last optimizer step): it delegates to
  :func:`liplayers.lipschitz.lipschitz_bound_of` (each liplayers layer's own bound, or the
  bound registered for a plain ``torch.nn`` type — exact float64 SVD for dense weights, never
  a power-iteration estimate). The registry denies by default: see :mod:`liplayers.lipschitz`.
* :func:`lipschitz_lower_bound` — the largest local Jacobian spectral norm found at (and a
  few ascent steps around) given points. Since ‖J(x)‖₂ ≤ L at every point where f is
  differentiable, it shows how tight the upper bound is.

"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from ..functional import random as _rng
from ..utils import accepts_renamed_kwargs

from ..lipschitz import UnboundedModuleError, allow_hooks as _allow_hooks, eval_mode, lipschitz_bound_of


__all__ = ["lipschitz_bound", "lipschitz_lower_bound", "check_boundable"]

Shape = Optional[Tuple[int, ...]]


def check_boundable(model: nn.Module, allow_hooks: bool = False, input_shape: Shape = None) -> None:
    """Refuse models whose eval-mode function the Lipschitz registry cannot see.

    Runs every check of :func:`lipschitz_bound` (unknown modules, argument values without a
    proof, instance or overridden ``forward``/``__call__``, hooks, dimensions that mix samples)
    by computing the bound; the value is discarded.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        UnboundedModuleError: see :func:`lipschitz_bound`.
    """
    lipschitz_bound(model, input_shape, allow_hooks=allow_hooks)


def lipschitz_bound(model: nn.Module, input_shape: Shape = None, *, allow_hooks: bool = False) -> float:
    r"""Guaranteed upper bound of the L2→L2 Lipschitz constant of ``model`` as it runs in eval mode.

    For all inputs ``a, b`` of shape ``input_shape``: ‖f(a) − f(b)‖₂ ≤ L ‖a − b‖₂, with f the
    eval-mode function of the model with its current weights (exact arithmetic; see
    :func:`~liplayers.certify.certified_radius` for the floating-point margin). Composed
    through sequential containers as the product of per-layer bounds computed from the
    actual weights (a Björck layer that has not converged, a spectral-normalized layer whose
    power iteration under-estimated σ, an ``nn.Linear`` with σ_max = 1.5 all report their
    true norm). The model is switched to eval mode for the computation (some
    parametrizations update state when read in training mode) and switched back.

    Args:
        model: any ``nn.Module`` built from known pieces (liplayers layers, registered plain
            ``torch.nn`` modules, ``nn.Sequential``).
        input_shape: shape of one input *without* the batch dimension; needed by layers whose
            bound depends on it (pooling with padding, adaptive pooling, some convolutions).
        allow_hooks: see :func:`check_boundable`.

    Returns:
        A finite float ≥ 0.

    Raises:
        UnboundedModuleError: a layer has no known bound (the message names it).
        ValueError: hooks (see :func:`check_boundable`), or a non-finite bound.

    Example:
        >>> import torch, liplayers as L
        >>> from liplayers.certify import lipschitz_bound
        >>> _ = torch.manual_seed(0)
        >>> net = L.Sequential(L.BjorckLinear(8, 8), L.MaxMin(), torch.nn.Linear(8, 3))
        >>> with torch.no_grad():
        ...     _ = net[2].weight.mul_(2.0 / torch.linalg.matrix_norm(net[2].weight, ord=2))
        >>> round(lipschitz_bound(net), 4)  # orthogonal (1) · MaxMin (1) · a layer of norm 2
        2.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if input_shape is not None:
        if isinstance(input_shape, (str, bytes)) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1
                                                             for s in tuple(input_shape)):
            raise ValueError(f"input_shape must be a sequence of positive ints (without batch), got {input_shape!r}")
        input_shape = tuple(int(s) for s in input_shape)
    with eval_mode(model), _allow_hooks(allow_hooks):
        bound = float(lipschitz_bound_of(model, input_shape))
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"the Lipschitz bound of {type(model).__name__} is not a finite non-negative number: {bound}")
    return bound


# ---------------------------------------------------------------------------------------------
# lower bound
def _outputs(model: nn.Module, x: Tensor) -> Tensor:
    out = model(x)
    if not isinstance(out, Tensor):
        raise TypeError(f"model must return a tensor, got {type(out).__name__}")
    return out.reshape(out.shape[0], -1)


def _jacobian(model: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Per-sample Jacobians (B, C, n) by C vector–Jacobian products (samples are independent)."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _outputs(model, xr)
        rows = []
        for c in range(out.shape[1]):
            (g,) = torch.autograd.grad(out[:, c].sum(), xr, retain_graph=True, allow_unused=True)
            if g is None:
                g = torch.zeros_like(xr)
            rows.append(g.reshape(x.shape[0], -1))
    return torch.stack(rows, dim=1), xr


def _local_norm_exact(model: nn.Module, x: Tensor) -> Tuple[Tensor, Tensor]:
    """Spectral norm of each local Jacobian (float64) and the top left singular vector (B, C)."""
    jac, _ = _jacobian(model, x)
    jac = jac.detach().to(torch.float64)
    u, s, _ = torch.linalg.svd(jac, full_matrices=False)
    return s[:, 0], u[:, :, 0]


def _local_norm_power(model: nn.Module, x: Tensor, n_power_iterations: int, generator) -> Tuple[Tensor, Tensor]:
    """Power iteration on J Jᵀ per sample (J v by the double-backward trick); returns (σ, u)."""
    xr = x.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _outputs(model, xr)
    B, C = out.shape
    u = _rng.randn((B, C), generator=generator, dtype=out.dtype, device=out.device)
    u = u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    sigma = torch.zeros(B, dtype=torch.float64, device=out.device)
    dummy = torch.zeros_like(out, requires_grad=True)
    with torch.enable_grad():
        # g(d) = Jᵀd is linear in d; differentiating g along v w.r.t. d gives J v
        (g,) = torch.autograd.grad(out, xr, grad_outputs=dummy, create_graph=True, retain_graph=True)
    for _ in range(max(1, n_power_iterations)):
        with torch.enable_grad():
            (jtu,) = torch.autograd.grad(out, xr, grad_outputs=u, retain_graph=True)
            v = jtu.reshape(B, -1)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
            (jv,) = torch.autograd.grad(g, dummy, grad_outputs=v.reshape(xr.shape), retain_graph=True)
        sigma = jv.detach().to(torch.float64).norm(dim=1)
        u = jv.detach() / jv.detach().norm(dim=1, keepdim=True).clamp_min(1e-30)
    return sigma, u


@accepts_renamed_kwargs({"iterations": "n_power_iterations"})
def lipschitz_lower_bound(
    model: nn.Module,
    x: Tensor,
    *,
    steps: int = 3,
    step_size: float = 0.05,
    n_power_iterations: int = 30,
    max_exact_outputs: int = 64,
    generator: Optional[torch.Generator] = None,
) -> float:
    r"""Empirical lower bound of the L2 Lipschitz constant: max of the local ‖J(x)‖₂ found.

    At each point of ``x`` the Jacobian J of the flattened output w.r.t. the input is formed
    exactly by C vector–Jacobian products (C = output size ≤ ``max_exact_outputs``) and its
    spectral norm taken by a float64 SVD; for larger outputs, ``n_power_iterations`` steps of power
    iteration on J Jᵀ (products by autograd, J v by the double-backward trick) give a value
    that can only be ≤ ‖J‖₂. Then ``steps`` ascent steps per point: move x by
    ``step_size``·max(‖x‖₂, 1) along the gradient of ‖Jᵀu‖² (u the top left singular vector);
    where that gradient vanishes (piecewise-linear networks have a locally constant
    Jacobian) a seeded random direction is tried instead; the best value per point is kept.

    Guarantee: for a model that is differentiable at the visited points, each value is a
    local operator norm ‖J(x)‖₂ ≤ L (exact arithmetic), so the result is ≤ every valid upper
    bound. At kinks autograd returns one-sided or averaged derivatives (e.g. MaxMin ties),
    which are limits or convex combinations of Jacobians and also have norm ≤ L. Because the
    Jacobian is computed in the model's dtype, the result is deflated by a relative
    ``32·eps(dtype)`` for rounding.

    Args:
        model: maps (B, ...) to (B, ...) outputs; evaluated in eval mode (restored after).
            Samples must not interact (eval-mode batch norm is fine).
        x: points (B, ...), floating point, finite.
        steps: ascent steps per point (0: evaluate at ``x`` only).
        step_size: relative step length (see above); > 0.
        n_power_iterations: power iterations (only for outputs larger than ``max_exact_outputs``).
        generator: random generator for the random directions / initial vectors.

    Returns:
        A float ≥ 0 (in output units per input unit).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError("x must be a non-empty floating-point tensor of shape (B, ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a finite float > 0, got {step_size!r}")

    with eval_mode(model):  # the modes of model and its children are restored after
        with torch.no_grad():
            n_out = _outputs(model, x[:1]).shape[1]
        exact = n_out <= max_exact_outputs

        def local(z: Tensor) -> Tuple[Tensor, Tensor]:
            if exact:
                return _local_norm_exact(model, z)
            return _local_norm_power(model, z, n_power_iterations, generator)

        best, u = local(x)
        cur = x.detach()
        B = x.shape[0]
        flat = lambda t: t.reshape(B, -1)  # noqa: E731
        scale = flat(cur).norm(dim=1).clamp_min(1.0)
        for _ in range(steps):
            # gradient of ‖Jᵀu‖² w.r.t. x (double backward); zero for piecewise-linear models
            direction = None
            try:
                xr = cur.detach().requires_grad_(True)
                with torch.enable_grad():
                    out = _outputs(model, xr)
                    (jtu,) = torch.autograd.grad(out, xr, grad_outputs=u.to(out.dtype), create_graph=True)
                    obj = jtu.pow(2).sum()
                    if obj.requires_grad:
                        (gx,) = torch.autograd.grad(obj, xr, allow_unused=True)
                        direction = None if gx is None else gx.detach()
            except RuntimeError:  # an op without double backward: fall back to random search
                direction = None
            rnd = _rng.randn(cur.shape, generator=generator, dtype=cur.dtype, device=cur.device)
            if direction is None:
                direction = rnd
            else:
                dn = flat(direction).norm(dim=1)
                use_rnd = ~(dn > 0) | ~torch.isfinite(dn)
                direction = torch.where(use_rnd.reshape((B,) + (1,) * (cur.dim() - 1)), rnd, direction)
            dn = flat(direction).norm(dim=1).clamp_min(1e-30)
            step = direction / dn.reshape((B,) + (1,) * (cur.dim() - 1))
            cand = cur + step_size * scale.reshape((B,) + (1,) * (cur.dim() - 1)).to(cur.dtype) * step
            val, u_c = local(cand)
            better = val > best
            best = torch.where(better, val, best)
            u = torch.where(better[:, None], u_c.to(u.dtype), u)
            cur = torch.where(better.reshape((B,) + (1,) * (cur.dim() - 1)), cand, cur)
    rtol = min(32 * torch.finfo(x.dtype).eps, 0.5)
    return float(best.max()) * (1.0 - rtol)
