"""Containers that know a guaranteed Lipschitz bound of what they compose."""
from __future__ import annotations

import torch
from torch import nn

from ..lipschitz import LINF_BOUNDS, LipschitzModule, compose_bounds, linf_lipschitz_bound_of, lipschitz_bound_of, real_arg

__all__ = ["Sequential", "Residual"]


class Sequential(nn.Sequential, LipschitzModule):
    """``nn.Sequential`` that reports ``lipschitz_bound()``: the product of its layers' bounds.

    Each layer's bound is computed from its weights as they are now (a Björck layer that has
    not converged reports its true norm); a layer without a known bound raises
    :class:`~liplayers.lipschitz.UnboundedModuleError` naming it rather than being assumed
    1-Lipschitz. ``input_shape`` (without batch) is propagated layer by layer for the layers
    whose bound depends on it.
    """

    def lipschitz_bound(self, input_shape=None) -> float:
        return compose_bounds(list(self), input_shape)

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        return LINF_BOUNDS.compose(list(self), input_shape)

    def to_torch(self) -> nn.Sequential:
        from .export import export  # same layer of the library

        return nn.Sequential(*[export(m) for m in self])


class Residual(LipschitzModule):
    """Convex residual connection y = (1 − α)·x + α·f(x), with f preserving the shape.

    By the triangle inequality its L2 Lipschitz constant is at most (1 − α) + α·L_f, so with a
    1-Lipschitz f the block is 1-Lipschitz for every α ∈ [0, 1] (a plain x + f(x) would be
    2-Lipschitz). Shapes: input (*), f(input) must have the same shape.

    Args:
        module: the residual branch f.
        alpha: weight of the branch, in [0, 1].
    """

    def __init__(self, module: nn.Module, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"Residual: alpha must be in [0, 1], got {alpha}")
        self.module = module
        self.alpha = float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.module(x)
        if y.shape != x.shape:
            raise ValueError(f"Residual: the branch changed the shape {tuple(x.shape)} -> {tuple(y.shape)}")
        return (1.0 - self.alpha) * x + self.alpha * y

    def lipschitz_bound(self, input_shape=None) -> float:
        # alpha is read (and checked) now: it may have been changed after construction
        alpha = real_arg(self, "alpha", lo=0.0, hi=1.0)
        return (1.0 - alpha) + alpha * lipschitz_bound_of(self.module, input_shape)

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        alpha = real_arg(self, "alpha", lo=0.0, hi=1.0)
        return (1.0 - alpha) + alpha * linf_lipschitz_bound_of(self.module, input_shape)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
