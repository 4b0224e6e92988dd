"""The Lipschitz protocol: modules that know a guaranteed upper bound of their L2 Lipschitz constant.

``lipschitz_bound_of(module, input_shape)`` returns a float upper bound of the module's
L2→L2 Lipschitz constant *as it runs now* (weights after the last optimizer step, eval-mode
behaviour), from the module's own :meth:`LipschitzModule.lipschitz_bound` or from a bound
registered for a plain ``torch.nn`` type with :func:`register_lipschitz_bound`. A module for
which no bound is known raises :class:`UnboundedModuleError` naming it: nothing is ever
assumed to be 1-Lipschitz.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from .functional.spectral import spectral_norm_exact

__all__ = [
    "LipschitzModule",
    "UnboundedModuleError",
    "lipschitz_bound_of",
    "register_lipschitz_bound",
    "output_shape",
    "compose_bounds",
    "BoundRegistry",
]

Shape = Optional[Tuple[int, ...]]


class UnboundedModuleError(TypeError):
    """Raised when a Lipschitz bound is asked of a module no bound is known for."""


class LipschitzModule(nn.Module):
    """Base class of modules that report a guaranteed L2 Lipschitz upper bound.

    Subclasses implement :meth:`lipschitz_bound`; modules with weights implement
    :meth:`to_torch` so :func:`liplayers.export` can replace them with plain ``torch.nn``
    modules.
    """

    def lipschitz_bound(self, input_shape: Shape = None) -> float:
        """Guaranteed upper bound of the L2 Lipschitz constant of this module as it runs now.

        Args:
            input_shape: shape of one input *without* the batch dimension, for layers whose
                bound depends on it (e.g. circular convolutions); ``None`` if not needed.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement lipschitz_bound")

    def to_torch(self) -> nn.Module:
        """An equivalent module built only from ``torch.nn`` (eval-mode behaviour frozen in)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement to_torch")


class BoundRegistry:
    """Bounds of module types for one pair of norms, looked up along each module's class MRO.

    A module with a ``method`` of its own (the protocol, e.g. ``lipschitz_bound``) reports its
    bound itself; otherwise the bound registered for its nearest registered base class is
    used — but never for a subclass that overrides ``forward``, whose map the registered bound
    knows nothing about. Anything else raises :class:`UnboundedModuleError` naming it.
    """

    def __init__(self, norm: str, method: str, hint: str) -> None:
        self.norm, self.method, self.hint = norm, method, hint
        self.bounds: Dict[Type[nn.Module], Callable[[nn.Module, Shape], float]] = {}

    def register(self, *types: Type[nn.Module]):
        """Decorator registering ``fn(module, input_shape) -> float`` as the bound of ``types``."""

        def deco(fn: Callable[[nn.Module, Shape], float]):
            for t in types:
                self.bounds[t] = fn
            return fn

        return deco

    def bound_of(self, module: nn.Module, input_shape: Shape = None) -> float:
        own = getattr(module, self.method, None)
        if callable(own):
            return float(own(input_shape))
        for klass in type(module).__mro__:
            if klass in self.bounds:
                if type(module).forward is not klass.forward:
                    raise UnboundedModuleError(
                        f"{type(module).__name__} subclasses {klass.__name__} but overrides forward: the "
                        f"{self.norm} bound registered for {klass.__name__} does not apply. Implement "
                        f"{self.method} or register a bound for its class"
                    )
                return float(self.bounds[klass](module, input_shape))
        raise UnboundedModuleError(
            f"no {self.norm} Lipschitz bound is known for module {type(module).__name__} ({module!r}); {self.hint}"
        )

    def compose(self, modules: Sequence[nn.Module], input_shape: Shape = None) -> float:
        """Product of the bounds of modules applied in sequence (shapes propagated)."""
        bound, shape = 1.0, input_shape
        for m in modules:
            bound *= self.bound_of(m, shape)
            if shape is not None:
                shape = output_shape(m, shape)
        return bound


L2_BOUNDS = BoundRegistry(
    "L2", "lipschitz_bound",
    "use a liplayers layer, or register one with liplayers.lipschitz.register_lipschitz_bound",
)
_REGISTRY = L2_BOUNDS.bounds  # read by liplayers.certify (which types have a bound)
register_lipschitz_bound = L2_BOUNDS.register


def lipschitz_bound_of(module: nn.Module, input_shape: Shape = None) -> float:
    """Guaranteed L2 Lipschitz upper bound of ``module`` (see module docstring)."""
    return L2_BOUNDS.bound_of(module, input_shape)


def output_shape(module: nn.Module, input_shape: Shape) -> Shape:
    """Shape (without batch) of ``module``'s output for one input of ``input_shape``.

    Found by an eval-mode forward of one zero input (the module's mode is restored).
    """
    if input_shape is None:
        return None
    with torch.no_grad():
        try:
            p = next(iter(module.parameters()), None)
            x = torch.zeros((1, *input_shape), dtype=p.dtype if p is not None else torch.float32,
                            device=p.device if p is not None else "cpu")
            was_training = module.training
            module.eval()
            try:
                y = module(x)
            finally:
                module.train(was_training)
        except Exception as exc:  # pragma: no cover - message improvement only
            raise ValueError(f"cannot propagate input shape {input_shape} through {type(module).__name__}: {exc}") from exc
    return tuple(y.shape[1:])


def compose_bounds(modules: Sequence[nn.Module], input_shape: Shape = None) -> float:
    """Product of the L2 bounds of modules applied in sequence (shapes propagated)."""
    return L2_BOUNDS.compose(modules, input_shape)


# ---- bounds of plain torch.nn modules ------------------------------------------------------
@register_lipschitz_bound(nn.Linear)
def _linear_bound(m: nn.Linear, input_shape: Shape) -> float:
    return float(spectral_norm_exact(m.weight))


@register_lipschitz_bound(nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.ReLU6, nn.Tanh,
                          nn.Hardtanh, nn.Dropout, nn.Softsign)
def _one_bound(m: nn.Module, input_shape: Shape) -> float:
    return 1.0  # Dropout: the identity in eval mode, which is what certificates are about


@register_lipschitz_bound(nn.ELU)
def _elu_bound(m: nn.ELU, input_shape: Shape) -> float:
    return max(1.0, float(m.alpha))


@register_lipschitz_bound(nn.Sigmoid)
def _sigmoid_bound(m: nn.Module, input_shape: Shape) -> float:
    return 0.25


@register_lipschitz_bound(nn.LeakyReLU)
def _leaky_bound(m: nn.LeakyReLU, input_shape: Shape) -> float:
    return max(1.0, abs(float(m.negative_slope)))


@register_lipschitz_bound(nn.Sequential)
def _sequential_bound(m: nn.Sequential, input_shape: Shape) -> float:
    return compose_bounds(list(m), input_shape)
