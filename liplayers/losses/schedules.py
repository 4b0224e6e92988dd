r"""Ramping the certified radius ε during training.

Losses that train for a radius (GloRo, EMMA, the offset of the offset cross-entropy, PGD
adversarial training) are usually started at a small ε that grows to the target radius:
GloRo nets (Leino, Wang & Fredrikson, ICML 2021) and LiResNets (Hu et al., NeurIPS 2023) ramp ε
over the first epochs, because a full-size ε on an untrained network makes the ⊥ logit or the
adversary win every sample and the gradient carries no class information.

* :class:`EpsilonRamp` — ε(t) for a step (or epoch) counter t:

  .. math::

      ε(t) = ε_0 + (ε_1 − ε_0)\, s\!\left(\operatorname{clip}\!\left(\tfrac{t − t_d}{T}, 0, 1\right)\right),
      \qquad s(u) = u \ (\text{linear}) \quad\text{or}\quad s(u) = \tfrac{1 − \cos(π u)}{2}\ (\text{cosine}),

  constant ε_0 during the first t_d = ``delay`` steps and constant ε_1 after t_d + T.
* :class:`EpsilonMixin` — gives a loss ``set_eps(eps)`` so a training loop can write
  ``loss.set_eps(ramp(step))`` (or ``ramp.update(step, loss, ...)``).
"""
from __future__ import annotations

import math
import numbers

from ._common import _nonneg

__all__ = ["EpsilonRamp", "EpsilonMixin"]

_SCHEDULES = ("linear", "cosine")


class EpsilonMixin:
    """``set_eps(eps)``: change the radius ε of a loss between steps (validated, ε ≥ 0)."""

    eps: float

    def set_eps(self, eps: float) -> None:
        self.eps = _nonneg("eps", eps)


class EpsilonRamp:
    r"""ε(t) rising from ``start`` to ``end`` over ``steps`` units of t, after ``delay`` units.

    Args:
        start: initial radius ε₀ ≥ 0. ``start > end`` ramps down.
        end: final radius ε₁ ≥ 0.
        steps: length T ≥ 0 of the ramp, in whatever unit the caller counts (optimizer steps,
            or epochs with fractional values); T = 0 jumps to ``end`` right after ``delay``.
        schedule: ``"linear"`` or ``"cosine"`` (s(u) = (1 − cos πu)/2: zero slope at both ends).
        delay: t_d ≥ 0 units held at ``start`` before the ramp begins.

    ``ramp(t)`` returns ε(t) for t ≥ 0 (a negative t is refused). ``ramp.update(t, *losses)`` calls
    ``set_eps(ramp(t))`` on each loss and returns the value.

    Shape: scalar in, Python float out.
    """

    def __init__(self, start: float, end: float, steps: float, schedule: str = "linear",
                 delay: float = 0.0) -> None:
        self.start = _nonneg("start", start)
        self.end = _nonneg("end", end)
        self.steps = _nonneg("steps", steps)
        self.delay = _nonneg("delay", delay)
        if schedule not in _SCHEDULES:
            raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
        self.schedule = schedule

    def fraction(self, t: float) -> float:
        """u = clip((t − delay)/steps, 0, 1) mapped through the schedule: the share of the ramp done."""
        if isinstance(t, numbers.Real) and not isinstance(t, bool):
            t = float(t)  # accepts numpy scalars
        t = _nonneg("t", t)
        if t <= self.delay:
            return 0.0
        if self.steps == 0.0:
            return 1.0
        u = min((t - self.delay) / self.steps, 1.0)
        if self.schedule == "cosine":
            return 0.5 * (1.0 - math.cos(math.pi * u))
        return u

    def __call__(self, t: float) -> float:
        s = self.fraction(t)
        if s == 1.0:
            return self.end  # exact at and after the end of the ramp
        return self.start + (self.end - self.start) * s

    def update(self, t: float, *losses) -> float:
        eps = self(t)
        for loss in losses:
            setter = getattr(loss, "set_eps", None)
            if not callable(setter):
                raise ValueError(f"{type(loss).__name__} has no set_eps(eps) method")
            setter(eps)
        return eps

    def __repr__(self) -> str:
        return (f"EpsilonRamp(start={self.start}, end={self.end}, steps={self.steps}, "
                f"schedule={self.schedule!r}, delay={self.delay})")
