r"""Jacobian regularization ``‖J‖²_F`` by random projections (the "JAC" baseline; Hoffman et al. 2019).

For a model ``f: R^n → R^C`` (logits by default) and a sample ``x``, ``J = ∂f/∂x`` is
``C × n``.  For any random vector ``v`` with ``E[vvᵀ] = I``:

* forward mode (``estimator="jvp"``, default): ``v ∈ R^n``, ``E‖Jv‖² = tr(JᵀJ) = ‖J‖²_F``;
* reverse mode (``estimator="vjp"``, Hoffman et al. 2019): ``v ∈ R^C``,
  ``E‖vᵀJ‖² = tr(JJᵀ) = ‖J‖²_F``.

Averaging ``num_probes`` independent draws keeps the estimate (and its parameter
gradient, since the probes do not depend on the parameters) **unbiased** for ``‖J‖²_F``;
the variance falls as ``1/num_probes``.  Rademacher probes (default) have lower
variance than Gaussian ones.  Forward mode costs about one extra forward pass per probe
(plus its backward in training) and is the cheaper choice when ``n ≫ C`` is not an issue
for memory; reverse mode needs a double backward.  ``estimator="exact"`` computes the whole
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
from ..losses._common import _check_reduction, _reduce
from ..utils import accepts_renamed_kwargs, renamed_attribute

__all__ = ["jacobian_penalty", "JacobianLoss"]


def _transform(out: Tensor, target: str) -> Tensor:
    if target == "logits":
        return out
    if target == "log_probs":
        return F.log_softmax(out, dim=-1)
    if target == "probs":
        return torch.softmax(out, dim=-1)
    raise ValueError(f"target must be 'logits', 'log_probs' or 'probs', got {target!r}")


_RENAMED = {"num_projections": "num_probes", "method": "estimator"}


def _penalty_and_logits(model, x, num_probes, estimator, target, probe, generator):
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values")
    k = num_probes
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"num_probes must be a positive int, got {k!r}")
    B = x.shape[0]

    def f(z):
        logits = model(z)
        return _transform(logits, target), logits

    if estimator == "jvp":
        V = _rng.probes(x.shape, k, probe, generator, x.dtype, x.device)
        _, u, logits = vmap(lambda v: jvp(f, (x,), (v,), has_aux=True), out_dims=(None, 0, None))(V)
        pen = u.reshape(k, B, -1).pow(2).sum(-1).mean(0)
    elif estimator == "vjp":
        xr = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out, logits = f(xr)
            W = _rng.probes(out.shape, k, probe, generator, x.dtype, x.device)
            pen = x.new_zeros(B)
            for i in range(k):  # k is small (1-2); each is one double-backward pass
                (g,) = torch.autograd.grad((out * W[i]).sum(), xr, create_graph=True)
                pen = pen + g.reshape(B, -1).pow(2).sum(-1)
        pen = pen / k
    elif estimator == "exact":
        jac, logits = jacrev(lambda z: (lambda o, l: (o.sum(0), l))(*f(z)), has_aux=True)(x)
        pen = jac.reshape(jac.shape[0], B, -1).pow(2).sum((0, 2))
    else:
        raise ValueError(f"estimator must be 'jvp', 'vjp' or 'exact', got {estimator!r}")
    if logits.dim() != 2 or logits.shape[0] != B:
        raise ValueError(f"model must return logits of shape (B, C), got {tuple(logits.shape)}")
    return pen, logits


@accepts_renamed_kwargs(_RENAMED)
def jacobian_penalty(
    model: nn.Module,
    x: Tensor,
    num_probes: int = 1,
    estimator: str = "jvp",
    *,
    target: str = "logits",
    probe: str = "rademacher",
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    r"""Unbiased random-projection estimate of ``‖∂f(x_b)/∂x_b‖²_F`` per sample, shape ``(B,)``.

    Args:
        model: maps ``(B, ...)`` to logits ``(B, C)``; samples must not interact.
        x: inputs ``(B, ...)``.
        num_probes: number of independent random probes averaged (≥ 1).
        estimator: ``"jvp"`` (randomized, input-space probes, forward mode), ``"vjp"``
            (randomized, output-space probes, reverse mode with ``create_graph``) or ``"exact"``
            (the full Jacobian).
        target: differentiate ``"logits"`` (default), ``"log_probs"`` or ``"probs"``.
        probe: ``"rademacher"`` or ``"gaussian"`` (``E[vvᵀ] = I`` for both).
        generator: :class:`torch.Generator` for the probes.

    Units: (output units / input units)², summed over classes and input features.
    """
    return _penalty_and_logits(model, x, num_probes, estimator, target, probe, generator)[0]


class JacobianLoss(nn.Module):
    r"""``loss = CE(f(x), y) + (lam/2)·‖J‖²_F`` (Hoffman et al. 2019 use ``λ_JR/2``); ``forward(model, x, y)``.

    Args:
        lam: weight ``lam ≥ 0`` of the penalty (Hoffman et al.'s ``λ_JR``, default 0.01).
        num_probes, estimator, target, probe, generator: as in :func:`jacobian_penalty`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    The logits for the cross-entropy come from the same pass as the penalty.

    Shape: x (B, ...), y (B,) → scalar, or (B,) with ``reduction="none"``.
    """

    @accepts_renamed_kwargs(_RENAMED)
    def __init__(self, lam: float = 0.01, num_probes: int = 1, estimator: str = "jvp", *,
                 target: str = "logits", probe: str = "rademacher", reduction: str = "mean",
                 generator: Optional[torch.Generator] = None):
        super().__init__()
        if not (lam >= 0):
            raise ValueError(f"lam must be >= 0, got {lam}")
        _transform(torch.zeros(1, 2), target)
        self.lam, self.num_probes, self.estimator = float(lam), num_probes, estimator
        self.target, self.probe, self.reduction, self.generator = target, probe, _check_reduction(reduction), generator

    num_projections = renamed_attribute("num_projections", "num_probes")
    method = renamed_attribute("method", "estimator")

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        pen, logits = _penalty_and_logits(model, x, self.num_probes, self.estimator, self.target,
                                          self.probe, self.generator)
        return _reduce(F.cross_entropy(logits, y, reduction="none") + 0.5 * self.lam * pen, self.reduction)
