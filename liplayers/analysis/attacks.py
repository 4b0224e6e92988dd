r"""Projected gradient ascent (PGD) in L2 / L∞ balls, for attacks and inner maximizations.

Three entry points:

* :func:`pgd` — generic: maximizes ``objective(model(x')).sum()`` over
  ``x' ∈ B_p(x, ε) ∩ domain``.
* :func:`pgd_attack` — untargeted evasion attack maximizing the margin loss
  ``max_{j≠y} f_j(x') − f_y(x')`` (positive ⇔ misclassified); for checking certificates.
* :func:`divergence_pgd` — maximizes a divergence (Fisher–Rao, KL, Hellinger) between the
  clean prediction ``p(x)`` and ``p(x')``: the inner maximization of FIRE (Picot et al. 2022 eq. 7),
  TRADES and the Hellinger loss (Picot et al. 2022 eq. 48).

Conventions shared by all three
-------------------------------
* ``x`` has shape ``(B, ...)``; the model maps it to logits ``(B, C)``.
* ``eps`` is a float or a tensor of shape ``(B,)`` (per-sample radius), in input units.
* Steps: L2 — ``x' ← x' + α·g/‖g‖₂`` (per sample; no move where ``g = 0``);
  L∞ — ``x' ← x' + α·sign(g)``.  Then projection onto the ball (radial rescaling for L2,
  coordinate clipping for L∞), then clamping to ``domain``.  Because ``x`` lies in the box
  ``domain`` and the box projection is non-expansive and fixes ``x``, the clamped point is
  still in the ball: the result is always in ``B_p(x, ε) ∩ domain``.
* ``random_start``: uniform in the L∞ ball, or uniform in the L2 ball
  (Gaussian direction, radius ``ε·U^{1/n}``).
* The model is used as given: no ``train()``/``eval()`` switch, and parameter ``.grad``
  fields are left untouched (gradients are taken with :func:`torch.autograd.grad` w.r.t.
  the input only).  A model in training mode with batch statistics (BatchNorm) couples the
  samples and updates running statistics during the attack — put it in eval mode
  yourself if that is not wanted.
* Deterministic given ``generator`` (a :class:`torch.Generator` on ``x``'s device), which
  is the only source of randomness.
* The returned tensor is detached and has ``x``'s dtype and shape.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from ..functional import random as _rng

from ..functional.geometry import get_divergence

__all__ = ["pgd", "pgd_attack", "divergence_pgd", "margin_objective"]

EpsType = Union[float, Tensor]


# --------------------------------------------------------------------------- helpers
def _norm_name(norm) -> str:
    if isinstance(norm, str):
        n = norm.lower().replace("_", "")
        if n in ("l2", "2"):
            return "l2"
        if n in ("linf", "inf", "l∞"):
            return "linf"
    elif norm == 2:
        return "l2"
    elif norm == math.inf:
        return "linf"
    raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")


def _per_sample(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) tensor to broadcast against x of shape (B, ...)."""
    return v.reshape((x.shape[0],) + (1,) * (x.dim() - 1))


def _eps_tensor(eps: EpsType, x: Tensor, name: str = "eps") -> Tensor:
    B = x.shape[0]
    if isinstance(eps, Tensor):
        e = eps.detach().to(device=x.device, dtype=x.dtype)
        if e.dim() == 0:
            e = e.expand(B)
        if e.shape != (B,):
            raise ValueError(f"{name} must be a float or a tensor of shape (B,)=({B},), got shape {tuple(eps.shape)}")
    else:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)):
            raise ValueError(f"{name} must be a float or a tensor of shape (B,), got {type(eps).__name__}")
        e = torch.full((B,), float(eps), dtype=x.dtype, device=x.device)
    if not bool(torch.isfinite(e).all()) or bool((e < 0).any()):
        raise ValueError(f"{name} must be finite and non-negative")
    return e


def _flat_norm(v: Tensor) -> Tensor:
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1), dim=1)


def _project(delta: Tensor, eps: Tensor, norm: str) -> Tensor:
    e = _per_sample(eps, delta)
    if norm == "linf":
        return torch.maximum(torch.minimum(delta, e), -e)
    n = _per_sample(_flat_norm(delta), delta)
    factor = torch.where(n > e, e / n.clamp_min(torch.finfo(delta.dtype).tiny), torch.ones_like(n))
    return delta * factor


def _random_start(x: Tensor, eps: Tensor, norm: str, generator: Optional[torch.Generator]) -> Tensor:
    e = _per_sample(eps, x)
    if norm == "linf":
        u = _rng.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        return (2 * u - 1) * e
    B, n = x.shape[0], x[0].numel()
    g = _rng.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    gn = _per_sample(_flat_norm(g).clamp_min(torch.finfo(x.dtype).tiny), x)
    r = _rng.rand((B,), generator=generator, dtype=x.dtype, device=x.device) ** (1.0 / n)
    return g / gn * _per_sample(r, x) * e


def _check_domain(domain, x: Tensor):
    if domain is None:
        return None
    if not isinstance(domain, Sequence) or len(domain) != 2:
        raise ValueError(f"domain must be None or a pair (low, high), got {domain!r}")
    lo, hi = float(domain[0]), float(domain[1])
    if not lo < hi:
        raise ValueError(f"domain must satisfy low < high, got {domain!r}")
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    if bool((x.detach() < lo - tol).any()) or bool((x.detach() > hi + tol).any()):
        raise ValueError(
            f"x lies outside the input domain {domain!r}; rescale the input or pass domain=None"
        )
    return lo, hi


def _evaluate(model: nn.Module, objective: Callable[[Tensor], Tensor], x_adv: Tensor, B: int) -> Tensor:
    val = objective(model(x_adv))
    if not isinstance(val, Tensor) or val.shape != (B,):
        got = tuple(val.shape) if isinstance(val, Tensor) else type(val).__name__
        raise ValueError(f"objective must return a per-sample tensor of shape ({B},), got {got}")
    return val


# --------------------------------------------------------------------------- PGD
def pgd(
    model: nn.Module,
    x: Tensor,
    objective: Callable[[Tensor], Tensor],
    eps: EpsType,
    norm: str = "l2",
    steps: int = 10,
    step_size: Optional[EpsType] = None,
    random_start: bool = True,
    domain: Optional[Sequence[float]] = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
    keep_best: bool = True,
) -> Tensor:
    r"""Projected gradient **ascent** of ``objective(model(x')).sum()`` over ``B_p(x, ε) ∩ domain``.

    Args:
        model: maps ``(B, ...)`` inputs to logits ``(B, C)``; used as given.
        x: clean inputs ``(B, ...)``, inside ``domain``.
        objective: ``logits_adv (B, C) -> (B,)`` per-sample values to maximize (the sum is
            differentiated, so samples must not interact).
        eps: radius, float or per-sample tensor ``(B,)``, same units as ``x``.
        norm: ``"l2"`` or ``"linf"``.
        steps: number of gradient steps (0 returns the start point).
        step_size: float or ``(B,)``; default ``2.5·eps/steps`` (Madry et al.).
        random_start: start uniformly in the ball (else at ``x``).
        domain: ``(low, high)`` box the result is clamped to; ``None`` for no clamping.
        generator: :class:`torch.Generator` for the random start (determinism).
        keep_best: return, per sample, the best point seen (clean ``x``, start and every
            iterate; costs two extra forward passes) so the objective never decreases
            w.r.t. the clean input.  ``False`` returns the last iterate (TRADES/FIRE
            training convention).

    Returns:
        Detached ``x_adv`` with ``x``'s shape/dtype, ``‖x_adv − x‖_p ≤ eps`` and inside ``domain``.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
        raise ValueError("x must be a floating-point tensor of shape (B, ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative int, got {steps!r}")
    norm = _norm_name(norm)
    x = x.detach()
    B = x.shape[0]
    e = _eps_tensor(eps, x)
    if step_size is None:
        alpha = 2.5 * e / max(steps, 1)
    else:
        alpha = _eps_tensor(step_size, x, "step_size")
    box = _check_domain(domain, x)

    def clamp(z: Tensor) -> Tensor:
        return z if box is None else z.clamp(box[0], box[1])

    x_adv = x.clone()
    if random_start:
        x_adv = clamp(x + _random_start(x, e, norm, generator))

    best = best_val = None
    if keep_best:
        with torch.no_grad():
            best_val = _evaluate(model, objective, x, B).detach()
        best = x.clone()

    a = _per_sample(alpha, x)
    tiny = torch.finfo(x.dtype).tiny
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            val = _evaluate(model, objective, x_adv, B)
            (grad,) = torch.autograd.grad(val.sum(), x_adv)
        x_adv = x_adv.detach()
        if keep_best:
            v = val.detach()
            better = v > best_val
            best_val = torch.where(better, v, best_val)
            best = torch.where(_per_sample(better, x), x_adv, best)
        if norm == "linf":
            step = grad.sign()
        else:
            step = grad / _per_sample(_flat_norm(grad).clamp_min(tiny), x)
        x_adv = clamp(x + _project(x_adv + a * step - x, e, norm))

    if not keep_best:
        return x_adv.detach()
    with torch.no_grad():
        v = _evaluate(model, objective, x_adv, B)
    better = v > best_val
    return torch.where(_per_sample(better, x), x_adv, best).detach()


def margin_objective(y: Tensor) -> Callable[[Tensor], Tensor]:
    """Objective ``logits ↦ max_{j≠y} f_j − f_y`` (shape ``(B,)``; > 0 ⇔ misclassified)."""

    def objective(logits: Tensor) -> Tensor:
        if logits.dim() != 2 or logits.shape[0] != y.shape[0]:
            raise ValueError(f"logits must have shape (B, C) with B={y.shape[0]}, got {tuple(logits.shape)}")
        f_y = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf"))
        return other.max(dim=1).values - f_y

    return objective


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: EpsType,
    norm: str = "l2",
    steps: int = 20,
    step_size: Optional[EpsType] = None,
    random_start: bool = True,
    domain: Optional[Sequence[float]] = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Untargeted PGD maximizing the margin loss ``max_{j≠y} f_j − f_y`` (keeps the best point).

    ``y``: integer labels ``(B,)``.  Other arguments as in :func:`pgd`.  A returned point with
    positive margin loss is a counterexample to any certificate of radius ≥ ‖x_adv − x‖.
    """
    if not isinstance(y, Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError("y must be an integer tensor of labels with shape (B,)")
    if y.shape != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    y = y.to(device=x.device, dtype=torch.int64)
    return pgd(model, x, margin_objective(y), eps, norm=norm, steps=steps, step_size=step_size,
               random_start=random_start, domain=domain, generator=generator, keep_best=True)


def divergence_pgd(
    model: nn.Module,
    x: Tensor,
    divergence: str = "fisher_rao",
    *,
    eps: EpsType,
    norm: str = "linf",
    steps: int = 10,
    step_size: Optional[EpsType] = None,
    random_start: bool = True,
    domain: Optional[Sequence[float]] = (0.0, 1.0),
    generator: Optional[torch.Generator] = None,
    clean_logits: Optional[Tensor] = None,
    keep_best: bool = False,
) -> Tensor:
    r"""PGD maximizing ``D(p(x), p(x'))`` with ``p(x)`` the (detached) clean prediction.

    ``divergence``: ``"fisher_rao"`` (FIRE, Picot et al. 2022 eq. 7), ``"kl"`` (TRADES,
    ``KL(p(x) ‖ p(x'))``) or ``"hellinger"`` (Picot et al. 2022 eq. 48).  The Fisher–Rao and
    Hellinger distances are used unsquared (same maximizer as the square; the square has a
    vanishing gradient near ``x' = x``).  Since ``d_FR = 4 arcsin(H/2)`` is an increasing
    function of the Hellinger distance ``H`` and the steps use only the gradient's direction
    per sample (sign / normalized), the FIRE and Hellinger attacks produce identical
    iterates.  All three have zero gradient at ``x' = x``, so
    keep ``random_start=True``.  ``clean_logits`` (B, C) may be passed to save a forward
    pass.  Default ``keep_best=False`` (last iterate, as in the TRADES/FIRE reference
    training code).  Other arguments as in :func:`pgd`.
    """
    get_divergence(divergence)  # validates the name
    if clean_logits is None:
        with torch.no_grad():
            clean_logits = model(x.detach())
    target = clean_logits.detach()
    if target.dim() != 2 or target.shape[0] != x.shape[0]:
        raise ValueError(f"clean logits must have shape (B, C) with B={x.shape[0]}, got {tuple(target.shape)}")
    if not bool(torch.isfinite(target).all()):
        raise ValueError("the model's clean logits contain non-finite values")
    # the clean side is constant during the attack: precompute it once
    log_p = F.log_softmax(target, dim=-1)
    if divergence == "kl":
        p = log_p.exp()

        def objective(logits_adv: Tensor) -> Tensor:  # KL(p(x) || p(x'))
            return (p * (log_p - F.log_softmax(logits_adv, dim=-1))).sum(-1)
    else:
        sqrt_p = torch.exp(0.5 * log_p)
        fisher = divergence == "fisher_rao"

        def objective(logits_adv: Tensor) -> Tensor:  # d_FR = 4 asin(H/2), H = ||sqrt p - sqrt q||
            h = torch.linalg.vector_norm(sqrt_p - torch.exp(0.5 * F.log_softmax(logits_adv, dim=-1)), dim=-1)
            return 4.0 * torch.asin((h / 2).clamp(0.0, 1.0)) if fisher else h

    return pgd(model, x, objective, eps, norm=norm, steps=steps, step_size=step_size,
               random_start=random_start, domain=domain, generator=generator, keep_best=keep_best)
