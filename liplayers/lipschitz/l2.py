"""The L2→L2 bound registry: ``lipschitz_bound_of``, ``register_lipschitz_bound``, ``compose_bounds``."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .protocol import Shape
from .linf import register_linf_lipschitz_bound
from .registry import BoundRegistry

__all__ = ["L2_BOUNDS", "lipschitz_bound_of", "register_lipschitz_bound", "register_both", "compose_bounds"]

L2_BOUNDS = BoundRegistry(
    "L2", "lipschitz_bound",
    "use a liplayers layer, implement lipschitz_bound(input_shape) in your module (a LipschitzModule), "
    "or register a bound for its class with liplayers.lipschitz.register_lipschitz_bound",
)
register_lipschitz_bound = L2_BOUNDS.register


def register_both(*types):
    """Register one bound function for the L2 and the ∞ registries (maps whose two constants agree,
    e.g. elementwise activations, identities, permutations of coordinates)."""

    def deco(fn):
        register_lipschitz_bound(*types)(fn)
        register_linf_lipschitz_bound(*types)(fn)
        return fn

    return deco


def lipschitz_bound_of(module: nn.Module, input_shape: Shape = None) -> float:
    """Guaranteed L2 Lipschitz upper bound of ``module`` as it runs now (see :mod:`liplayers.lipschitz`).

    Raises:
        UnboundedModuleError: no bound is proved for the module, one of its argument values, its
            call path (instance ``forward``, subclass overriding ``forward``/``__call__``) or its hooks.
    """
    return L2_BOUNDS.bound_of(module, input_shape)


def compose_bounds(modules: Sequence[nn.Module], input_shape: Shape = None) -> float:
    """Product of the L2 bounds of modules applied in sequence (input shapes propagated)."""
    return L2_BOUNDS.compose(modules, input_shape)
