r"""Jacobian regularization ``‖J‖²_F`` by random projections (the "JAC" baseline; Hoffman et al. 2019).

For a model ``f: R^n → R^C`` (logits by default) and a sample ``x``, ``J = ∂f/∂x`` is
``C × n``.  For any random vector ``v`` with ``E[vvᵀ] = I``:

* forward mode (``method="jvp"``, default): ``v ∈ R^n``, ``E‖Jv‖² = tr(JᵀJ) = ‖J‖²_F``;
* reverse mode (``method="vjp"``, Hoffman et al. 2019): ``v ∈ R^C``,
  ``E‖vᵀJ‖² = tr(JJᵀ) = ‖J‖²_F``.

Averaging ``num_projections`` independent draws keeps the estimate (and its parameter
gradient, since the probes do not depend on the parameters) **unbiased** for ``‖J‖²_F``;
the variance falls as ``1/num_projections``.  Rademacher probes (default) have lower
variance than Gaussian ones.  Forward mode costs about one extra forward pass per probe
(plus its backward in training) and is the cheaper choice when ``n ≫ C`` is not an issue
for memory; reverse mode needs a double backward.  ``method="exact"`` computes the whole
Jacobian (``jacrev``) for testing.

Hoffman, Roberts & Yaida, "Robust learning with Jacobian regularization", 2019.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import jacrev, jvp, vmap
from ..functional import random as _rng

__all__ = ["jacobian_penalty", "JacobianLoss"]


def _transform(out: Tensor, target: str) -> Tensor:
    if target == "logits":
        return out
    if target == "log_probs":
        return F.log_softmax(out, dim=-1)
    if target == "probs":
        return torch.softmax(out, dim=-1)
    raise ValueError(f"target must be 'logits', 'log_probs' or 'probs', got {target!r}")


def _penalty_and_logits(model, x, num_projections, method, target, probe, generator):
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values")
    k = num_projections
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"num_projections must be a positive int, got {k!r}")
    B = x.shape[0]

    def f(z):
        logits = model(z)
        return _transform(logits, target), logits

    if method == "jvp":
        V = _rng.probes(x.shape, k, probe, generator, x.dtype, x.device)
        _, u, logits = vmap(lambda v: jvp(f, (x,), (v,), has_aux=True), out_dims=(None, 0, None))(V)
        pen = u.reshape(k, B, -1).pow(2).sum(-1).mean(0)
    elif method == "vjp":
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out, logits = f(xr)
            W = _rng.probes(out.shape, k, probe, generator, x.dtype, x.device)
            pen = x.new_zeros(B)
            for i in range(k):  # k is small (1-2); each is one double-backward pass
                (g,) = torch.autograd.grad((out * W[i]).sum(), xr, create_graph=True)
                pen = pen + g.reshape(B, -1).pow(2).sum(-1)
        pen = pen / k
    elif method == "exact":
        jac, logits = jacrev(lambda z: (lambda o, l: (o.sum(0), l))(*f(z)), has_aux=True)(x)
        pen = jac.reshape(jac.shape[0], B, -1).pow(2).sum((0, 2))
    else:
        raise ValueError(f"method must be 'jvp', 'vjp' or 'exact', got {method!r}")
    if logits.dim() != 2 or logits.shape[0] != B:
        raise ValueError(f"model must return logits of shape (B, C), got {tuple(logits.shape)}")
    return pen, logits


def jacobian_penalty(
    model: nn.Module,
    x: Tensor,
    num_projections: int = 1,
    method: str = "jvp",
    *,
    target: str = "logits",
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Unbiased random-projection estimate of ``‖∂f(x_b)/∂x_b‖²_F`` per sample, shape ``(B,)``.

    Args:
        model: maps ``(B, ...)`` to logits ``(B, C)``; samples must not interact.
        x: inputs ``(B, ...)``.
        num_projections: number of independent probes averaged (≥ 1).
        method: ``"jvp"`` (input-space probes, forward mode), ``"vjp"`` (output-space
            probes, reverse mode with ``create_graph``), ``"exact"`` (full Jacobian).
        target: differentiate ``"logits"`` (default), ``"log_probs"`` or ``"probs"``.
        probe: ``"rademacher"`` or ``"gaussian"`` (``E[vvᵀ] = I`` for both).
        generator: :class:`torch.Generator` for the probes.

    Units: (output units / input units)², summed over classes and input features.
    """
    return _penalty_and_logits(model, x, num_projections, method, target, probe, generator)[0]


class JacobianLoss(nn.Module):
    r"""``CE(f(x), y) + (λ/2)·‖J‖²_F`` (Hoffman et al. 2019 use ``λ_JR/2``); ``forward(model, x, y)``.

    Args:
        lam: weight ``λ ≥ 0`` of the penalty (Hoffman et al.'s ``λ_JR``, default 0.01).
        num_projections, method, target, probe, generator: as in :func:`jacobian_penalty`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    The logits for the cross-entropy come from the same pass as the penalty.
    """

    def __init__(self, lam: float = 0.01, num_projections: int = 1, method: str = "jvp", *,
                 target: str = "logits", probe: str = "rademacher", reduction: str = "mean",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if not (lam >= 0):
            raise ValueError(f"lam must be >= 0, got {lam}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        _transform(torch.zeros(1, 2), target)
        self.lam, self.num_projections, self.method = float(lam), num_projections, method
        self.target, self.probe, self.reduction, self.generator = target, probe, reduction, generator

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        pen, logits = _penalty_and_logits(model, x, self.num_projections, self.method, self.target,
                                          self.probe, self.generator)
        loss = F.cross_entropy(logits, y, reduction="none") + 0.5 * self.lam * pen
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss
