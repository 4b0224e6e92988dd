r"""Information-geometric adversarial losses: FIRE, TRADES, Hellinger.

Picot et al., "Adversarial Robustness via Fisher-Rao Regularization", IEEE TPAMI 2022 (FIRE);
Zhang et al., ICML 2019 (TRADES).  All three compute, per sample,

    loss(x, y) = CE(f(x), y) + lam · D(p(x), p(x'))          (Picot et al. 2022 eq. 7, λ = lam)

with ``x'`` obtained by PGD (:func:`liplayers.analysis.attacks.divergence_pgd`) maximizing the same
divergence from the (detached) clean prediction within ``B_p(x, ε) ∩ domain``:

======================  =============================  =============================================
class                   D                              reference
======================  =============================  =============================================
:class:`FIRELoss`       ``d_FR²`` (Fisher–Rao, sq.)    Picot et al. 2022 eq. 7, default lam = 12
:class:`TRADESLoss`     ``KL(p(x) ‖ p(x'))``           TRADES / Picot et al. 2022 eq. 5, lam = 6
:class:`HellingerLoss`  ``H²`` (Picot et al. eq. 46)   Picot et al. 2022 eq. 48, default lam = 12
======================  =============================  =============================================

Near ``x' = x`` the three agree up to constants: ``KL ≈ d²/2`` and ``H² ≈ d²/4``.
Gradients flow through both ``p(x)`` and ``p(x')`` (as in TRADES); ``x'`` itself is a
constant (no gradient through the attack).

NaN guard.  The reference FIRE code evaluates ``2·arccos(Σ√(p q))``: rounding can push the
sum above 1 (NaN), ``arccos'`` is infinite at 1 (i.e. exactly at ``p = q``, the typical case
early in training and for the clean/adversarial pair of a robust model), and ``√`` of an
underflowed probability has an infinite derivative.  Here the distance is
``4·arcsin(‖√p − √q‖/2)`` with ``√p = exp(½ log_softmax)`` (see
:func:`liplayers.functional.geometry.fisher_rao_distance`), whose value and gradient are finite
everywhere; non-finite logits raise a ``ValueError`` instead of propagating NaN silently.

The model is used as given (no ``train()``/``eval()`` switching); during the inner PGD
parameter ``.grad`` fields are not touched.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.attacks import divergence_pgd
from ..functional.geometry import fisher_rao_distance, hellinger_distance, kl_divergence

__all__ = ["FIRELoss", "TRADESLoss", "HellingerLoss"]


class _DivergenceRegularizedLoss(nn.Module):
    divergence: str = ""
    default_lam: float = 1.0

    def __init__(
        self,
        lam: Optional[float] = None,
        eps: float = 8 / 255,
        norm: str = "linf",
        steps: int = 10,
        step_size: Optional[float] = None,
        domain: Optional[Sequence[float]] = (0.0, 1.0),
        random_start: bool = True,
        reduction: str = "mean",
        generator: Optional[torch.Generator] = None,
    ):
        super().__init__()
        lam = self.default_lam if lam is None else lam
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (lam >= 0) or lam == float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (eps >= 0) or eps == float("inf"):
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        if norm not in ("l2", "linf"):
            raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if step_size is not None and not (step_size > 0):
            raise ValueError(f"step_size must be > 0 or None, got {step_size!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
        self.lam, self.eps, self.norm, self.steps = float(lam), float(eps), norm, steps
        self.step_size, self.domain, self.random_start = step_size, domain, random_start
        self.reduction, self.generator = reduction, generator
        self.last_ce: Optional[Tensor] = None
        self.last_reg: Optional[Tensor] = None

    def regularizer(self, logits: Tensor, logits_adv: Tensor) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def adversarial(self, model: nn.Module, x: Tensor, clean_logits: Optional[Tensor] = None) -> Tensor:
        """The inner maximizer ``x'`` (detached), by PGD on this loss's divergence."""
        return divergence_pgd(model, x, self.divergence, eps=self.eps, norm=self.norm, steps=self.steps,
                              step_size=self.step_size, random_start=self.random_start, domain=self.domain,
                              generator=self.generator, clean_logits=clean_logits)

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """``x``: inputs ``(B, ...)`` in ``domain``; ``y``: labels ``(B,)``.  Returns the reduced loss."""
        if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
            raise ValueError(f"y must be a label tensor of shape ({x.shape[0]},)")
        logits = model(x)
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise ValueError(f"model must return logits of shape (B, C), got {tuple(logits.shape)}")
        if not bool(torch.isfinite(logits.detach()).all()):
            raise ValueError("model returned non-finite logits on the clean input")
        x_adv = self.adversarial(model, x, clean_logits=logits.detach())
        logits_adv = model(x_adv)
        if not bool(torch.isfinite(logits_adv.detach()).all()):
            raise ValueError("model returned non-finite logits on the adversarial input")
        ce = F.cross_entropy(logits, y, reduction="none")
        reg = self.regularizer(logits, logits_adv)
        loss = ce + self.lam * reg
        self.last_ce, self.last_reg = ce.detach().mean(), reg.detach().mean()
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


_ARGS_DOC = """
    Args:
        lam: weight ``lam ≥ 0`` of the divergence term (default {lam}).
        eps: attack radius in input units (default 8/255).
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: PGD steps (default 10; Picot et al. 2022 use 40 on MNIST).
        step_size: PGD step; default ``2.5·eps/steps``.
        domain: input box ``(low, high)`` or ``None``.
        random_start: PGD random start (keep it: the divergence has zero gradient at ``x' = x``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        generator: :class:`torch.Generator` for the random start.

    ``forward(model, x, y) -> loss``; the batch means of the two terms are kept in
    ``last_ce`` / ``last_reg`` for logging.
"""


class FIRELoss(_DivergenceRegularizedLoss):
    __doc__ = r"""FIRE (Picot et al. 2022 eq. 7): ``loss = CE(x) + lam·d_FR²(p(x), p(x'))``, ``x'`` by PGD on ``d_FR``.""" + _ARGS_DOC.format(lam=12)
    divergence = "fisher_rao"
    default_lam = 12.0

    def regularizer(self, logits: Tensor, logits_adv: Tensor) -> Tensor:
        return fisher_rao_distance(logits, logits_adv, validate=False) ** 2


class TRADESLoss(_DivergenceRegularizedLoss):
    __doc__ = r"""TRADES: ``loss = CE(x) + lam·KL(p(x) ‖ p(x'))``, ``x'`` by PGD on the same KL (lam = TRADES' 1/λ = β).""" + _ARGS_DOC.format(lam=6)
    divergence = "kl"
    default_lam = 6.0

    def regularizer(self, logits: Tensor, logits_adv: Tensor) -> Tensor:
        return kl_divergence(logits, logits_adv, validate=False)


class HellingerLoss(_DivergenceRegularizedLoss):
    __doc__ = r"""Hellinger (Picot et al. 2022 eq. 48): ``loss = CE(x) + lam·H²(p(x), p(x'))``, ``x'`` by PGD on ``H``.""" + _ARGS_DOC.format(lam=12)
    divergence = "hellinger"
    default_lam = 12.0

    def regularizer(self, logits: Tensor, logits_adv: Tensor) -> Tensor:
        return hellinger_distance(logits, logits_adv, validate=False) ** 2
