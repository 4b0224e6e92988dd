r"""PGD adversarial training (Madry, Makelov, Schmidt, Tsipras & Vladu, ICLR 2018).

The robust objective is the saddle point problem

.. math::

    \min_θ\ \mathbb{E}_{(x, y)}\Big[\max_{x' ∈ B_p(x, ε) ∩ [0, 1]^n} \mathrm{CE}(f_θ(x'), y)\Big],

whose inner maximum is approximated by projected gradient ascent (PGD) from a random start
in the ball: L∞ steps x' ← Π(x' + α·sign ∇_{x'} CE), L2 steps x' ← Π(x' + α·∇/‖∇‖₂), Π the
projection onto the ball followed by clamping to the input box (the result stays in both,
since x is in the box). The outer minimization then trains on CE(f_θ(x'), y) with x' held
fixed (Danskin's theorem: the gradient at the maximizer). The attack is
:func:`liplayers.analysis.attacks.pgd`.

Unlike a Lipschitz certificate this gives no guarantee: it is an empirical defence, here for
comparison with certified training and as the inner loop of attack-based baselines.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..analysis.attacks import pgd
from ..losses._common import _check_reduction, _multiclass, _nonneg, _reduce
from ..losses.schedules import EpsilonMixin

__all__ = ["AdversarialTrainingLoss"]

_MODES = ("eval", "train", "same")


class AdversarialTrainingLoss(EpsilonMixin, nn.Module):
    r"""Madry et al.'s PGD adversarial training loss: CE(f(x'), y), x' = PGD maximizer of CE.

    Args:
        eps: radius ε ≥ 0 in input units (``set_eps`` changes it between steps). ε = 0 is the
            clean cross-entropy.
        norm: ``"linf"`` (default) or ``"l2"``.
        steps: PGD steps (default 10).
        step_size: α > 0; default 2.5·ε/steps.
        random_start: start uniformly in the ball (default True, as Madry et al.).
        domain: input box ``(low, high)`` the attack stays in (default (0, 1)); None for none.
        keep_best: return, per sample, the highest-loss point seen (clean x included, so the
            loss is never below the clean one when the attack runs in the model's own mode;
            two extra forward passes). Default False: the last iterate, as Madry et al.
        attack_mode: the mode the model runs in during the attack — ``"eval"`` (default: batch
            statistics and dropout frozen, running statistics untouched), ``"train"`` or
            ``"same"`` (as given). Every submodule's ``training`` flag is restored afterwards,
            also when the attack raises.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        generator: :class:`torch.Generator` for the random start (determinism).

    ``forward(model, x, y)``: x (B, ...) inside ``domain``, y (B,) integer labels → loss. The
    attack differentiates with respect to the input only (:func:`torch.autograd.grad`), so no
    parameter ``.grad`` is written by it; the returned loss carries the graph of the final
    forward pass f(x') for the optimizer step. The last adversarial batch is kept (detached)
    in ``last_adv``.

    Shape:
        x (B, ...), y (B,), model output (B, C). Output: scalar, or (B,) with ``reduction="none"``.
    """

    def __init__(self, eps: float, norm: str = "linf", steps: int = 10, step_size: Optional[float] = None,
                 random_start: bool = True, domain: Optional[Sequence[float]] = (0.0, 1.0),
                 keep_best: bool = False, attack_mode: str = "eval", reduction: str = "mean",
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.eps = _nonneg("eps", eps)
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if step_size is not None:
            step_size = _nonneg("step_size", step_size)
            if step_size == 0.0:
                raise ValueError("step_size must be > 0 or None")
        if attack_mode not in _MODES:
            raise ValueError(f"attack_mode must be one of {_MODES}, got {attack_mode!r}")
        if domain is not None and (not isinstance(domain, Sequence) or len(domain) != 2
                                   or not float(domain[0]) < float(domain[1])):
            raise ValueError(f"domain must be None or a pair (low, high) with low < high, got {domain!r}")
        self.norm, self.steps, self.step_size = norm, steps, step_size
        self.random_start, self.domain, self.keep_best = bool(random_start), domain, bool(keep_best)
        self.attack_mode = attack_mode
        self.reduction = _check_reduction(reduction)
        self.generator = generator
        self.last_adv: Optional[Tensor] = None

    def adversarial(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        """PGD maximizer x' of CE(model(x'), y) in B_p(x, ε) ∩ domain (detached), model modes restored."""
        who = type(self).__name__
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 1:
            raise ValueError(f"{who}: x must be a floating-point tensor of shape (B, ...)")
        if not isinstance(y, Tensor) or y.shape != (x.shape[0],):
            raise ValueError(f"{who}: y must be a label tensor of shape ({x.shape[0]},)")
        checked = []

        def objective(logits: Tensor) -> Tensor:
            if not checked:  # validate logits and labels once, on the first forward pass
                checked.append(_multiclass(logits, y, who))
            return F.cross_entropy(logits, checked[0], reduction="none")

        flags = [(m, m.training) for m in model.modules()]
        try:
            if self.attack_mode != "same":
                model.train(self.attack_mode == "train")
            return pgd(model, x, objective, self.eps, norm=self.norm, steps=self.steps,
                       step_size=self.step_size, random_start=self.random_start, domain=self.domain,
                       generator=self.generator, keep_best=self.keep_best)
        finally:
            for m, flag in flags:
                m.training = flag

    def forward(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_adv = self.adversarial(model, x, y)
        self.last_adv = x_adv
        logits = model(x_adv)
        target = _multiclass(logits, y, type(self).__name__)
        return _reduce(F.cross_entropy(logits, target, reduction="none"), self.reduction)

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, norm={self.norm!r}, steps={self.steps}, step_size={self.step_size}, "
                f"random_start={self.random_start}, attack_mode={self.attack_mode!r}, "
                f"reduction={self.reduction!r}")
