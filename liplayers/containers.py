"""Containers that know a guaranteed Lipschitz bound of what they compose."""
from __future__ import annotations

from torch import nn

from .lipschitz import LipschitzModule, compose_bounds

__all__ = ["Sequential"]


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

    def to_torch(self) -> nn.Sequential:
        from .export import export  # same layer of the library

        return nn.Sequential(*[export(m) for m in self])
