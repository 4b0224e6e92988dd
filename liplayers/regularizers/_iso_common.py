r"""What the ISO regularizers share (:mod:`.iso`, :mod:`.iso_variants`, :mod:`.fisher_spectrum`).

Argument checks, the exact output Jacobian and the forward-mode probe images of an output map
``φ(logits)``, the Gram terms of the unbiased U-statistic, and the loss with ISO's geometric
weight schedule ``loss = (1 − lam)·CE + lam·penalty`` (Shi-Garrier, Bouaynaya & Delahaye,
"Adversarial Robustness with Partial Isometry", Entropy 2024, §4.2 and eq. 15).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.func import jacrev, jvp, vmap

from ..functional import random as _rng
from ..losses._common import _check_reduction, _reduce
from ..utils import accepts_renamed_kwargs, renamed_attribute

__all__ = ["iso_schedule"]

_ESTIMATORS = ("exact", "randomized")


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError("x must be a floating-point tensor of shape (B, ...) with at least 2 dims")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains non-finite values")


def _check_logits(logits: Tensor, B: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != B or logits.shape[1] < 2:
        raise ValueError(f"model must return logits of shape (B, C) with B={B}, C>=2; got {tuple(logits.shape)}")
    if not bool(torch.isfinite(logits.detach()).all()):
        raise ValueError("model returned non-finite logits")


def _check_positive(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return float(v)


def _check_int(name: str, k, low: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < low:
        raise ValueError(f"{name} must be an int >= {low}, got {k!r}")
    return k


def _check_estimator(estimator: str) -> str:
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be 'exact' or 'randomized', got {estimator!r}")
    return estimator


def _safe_sqrt(v: Tensor) -> Tensor:
    """sqrt(max(v, 0)) with a zero gradient where v <= 0 (no inf/nan)."""
    pos = v > 0
    return torch.where(pos, torch.where(pos, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))


def _output_jacobian(model: nn.Module, x: Tensor, phi: Callable[[Tensor], Tensor]) -> Tuple[Tensor, Tensor]:
    """Exact ``J = ∂φ(model(x))/∂x`` per sample, ``(B, C, n)`` (one vmapped reverse pass per output), and the logits."""
    _check_x(x)
    B = x.shape[0]

    def f(z: Tensor):
        logits = model(z)
        return phi(logits).sum(0), logits

    jac, logits = jacrev(f, has_aux=True)(x)  # (C, B, *x.shape[1:])
    _check_logits(logits, B)
    return jac.reshape(jac.shape[0], B, -1).transpose(0, 1), logits


def _jvp_probes(model: nn.Module, x: Tensor, k: int, probe: str, generator: Optional[torch.Generator],
                phi: Callable[[Tensor], Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
    """``u_i = J_φ v_i`` for ``k`` independent probes: ``(φ (B, C), u (k, B, C), logits (B, C))``."""
    V = _rng.probes(x.shape, k, probe, generator, x.dtype, x.device)

    def one(v: Tensor):
        def g(z: Tensor):
            logits = model(z)
            return phi(logits), logits
        return jvp(g, (x,), (v,), has_aux=True)

    if k == 1:  # plain jvp: avoids vmap's overhead
        out, u, logits = one(V[0])
        return out, u.unsqueeze(0), logits
    # the primal (φ, logits) does not depend on the probe: computed once, not k times
    return vmap(one, out_dims=(None, 0, None))(V)


def _gram_terms(u: Tensor) -> Tuple[Tensor, Tensor]:
    """From probe images ``u`` (k ≥ 2, B, C): ``mean_{i≠j} (u_iᵀu_j)²`` (B,) and ``‖u_i‖²`` (B, k).

    ``E[(u_iᵀu_j)²] = ‖M‖²_F`` for independent probes with ``E[u uᵀ] = M``: the first term of the
    U-statistic ``mean_{i≠j}(u_iᵀu_j)² − (2/k)Σ_i u_iᵀCu_i + ‖C‖²_F``, unbiased for ``‖M − C‖²_F``.
    """
    k = u.shape[0]
    G = torch.einsum("ibc,jbc->bij", u, u)  # (B, k, k) Gram matrix of the probe images
    diag = torch.diagonal(G, dim1=1, dim2=2)
    return (G.pow(2).sum((1, 2)) - diag.pow(2).sum(1)) / (k * (k - 1)), diag


@accepts_renamed_kwargs({"eta_min": "lam_min", "eta_max": "lam_max"})
def iso_schedule(epoch: int, num_epochs: int, lam_min: float = 0.002, lam_max: float = 0.006) -> float:
    r"""Geometric schedule of Shi-Garrier et al. 2024 (§4.2): ``lam_i = lam_min (lam_max/lam_min)^{(i−1)/(N−1)}``.

    The paper's ``η``. ``epoch`` is **0-based** (``epoch = i − 1`` ∈ ``[0, num_epochs − 1]``); returns
    ``lam_min`` at the first epoch and ``lam_max`` at the last (``lam_min`` throughout if
    ``num_epochs == 1``). Defaults are the paper's MNIST values. Requires
    ``0 < lam_min ≤ lam_max ≤ 1``.
    """
    if isinstance(num_epochs, bool) or not isinstance(num_epochs, int) or num_epochs < 1:
        raise ValueError(f"num_epochs must be a positive int, got {num_epochs!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < num_epochs:
        raise ValueError(f"epoch must be an int in [0, {num_epochs - 1}] (0-based), got {epoch!r}")
    if not (0 < lam_min <= lam_max <= 1):
        raise ValueError(f"need 0 < lam_min <= lam_max <= 1, got lam_min={lam_min}, lam_max={lam_max}")
    if num_epochs == 1:
        return float(lam_min)
    return float(lam_min * (lam_max / lam_min) ** (epoch / (num_epochs - 1)))


class _ScheduledISO(nn.Module):
    """``loss = (1 − lam)·CE + lam·penalty`` with ``lam`` fixed or following :func:`iso_schedule`.

    Subclasses set ``eps`` and call :meth:`_combine` from ``forward``; ``last_ce`` /
    ``last_alpha`` keep the detached batch means of the two terms for logging.
    """

    def __init__(self, eps: float, scale: Optional[float], lam: Optional[float], lam_min: float, lam_max: float,
                 num_epochs: int, estimator: str, reduction: str) -> None:
        super().__init__()
        self.eps = _check_positive("eps", eps)
        self.scale = None if scale is None else _check_positive("scale", scale)
        if lam is not None and not (0 <= lam <= 1):
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        iso_schedule(0, num_epochs, lam_min, lam_max)  # validates
        self.estimator = _check_estimator(estimator)
        self.reduction = _check_reduction(reduction)
        self.lam_fixed, self.lam_min, self.lam_max, self.num_epochs = lam, lam_min, lam_max, num_epochs
        self.epoch = 0
        self.last_ce: Optional[Tensor] = None
        self.last_alpha: Optional[Tensor] = None

    @property
    def lam(self) -> float:
        """The weight of the penalty now: ``lam`` if fixed, else the schedule's value at :attr:`epoch`."""
        if self.lam_fixed is not None:
            return float(self.lam_fixed)
        return iso_schedule(self.epoch, self.num_epochs, self.lam_min, self.lam_max)

    epsilon = renamed_attribute("epsilon", "eps")
    eta = renamed_attribute("eta", "lam")
    eta_fixed = renamed_attribute("eta_fixed", "lam_fixed")
    eta_min = renamed_attribute("eta_min", "lam_min")
    eta_max = renamed_attribute("eta_max", "lam_max")

    def set_epoch(self, epoch: int) -> None:
        """Set the (0-based) epoch that drives the ``lam`` schedule."""
        iso_schedule(epoch, self.num_epochs, self.lam_min, self.lam_max)
        self.epoch = epoch

    def _combine(self, ce: Tensor, penalty: Tensor) -> Tensor:
        lam = self.lam
        self.last_ce, self.last_alpha = ce.detach().mean(), penalty.detach().mean()
        return _reduce((1 - lam) * ce + lam * penalty, self.reduction)
