"""The Lipschitz protocol: modules that know a guaranteed upper bound of their Lipschitz constant.

Every liplayers layer implements the same three methods:

* ``lipschitz_bound(input_shape=None) -> float`` — a guaranteed upper bound of the L2→L2
  Lipschitz constant of the module *as it runs now* (weights after the last optimizer step,
  eval-mode behaviour), computed from the weights actually used, never from the intention that
  the layer is orthogonal; ``input_shape`` is the shape of one input without the batch dimension,
  for layers whose bound depends on it;
* ``eval_weight() -> Tensor`` — the weight the layer uses in eval mode (only layers with one
  weight define it, so ``hasattr(m, "eval_weight")`` tells them apart);
* ``to_torch() -> nn.Module`` — an equivalent module built only from ``torch.nn``.

Modules may also implement ``linf_lipschitz_bound(input_shape=None)`` (∞→∞ bound). A module for
which no bound is known raises :class:`UnboundedModuleError` naming it: nothing is ever assumed
to be 1-Lipschitz.
"""
from __future__ import annotations

from typing import Optional, Tuple

from torch import nn

from ..parametrizations._pickle import PicklableParametrizationMixin

__all__ = ["LipschitzModule", "UnboundedModuleError", "HookedModuleError", "InputShapeRequiredError", "Shape"]

Shape = Optional[Tuple[int, ...]]


class UnboundedModuleError(TypeError):
    """Raised when a Lipschitz bound is asked of a module (or argument value) no bound is proved for."""


class HookedModuleError(UnboundedModuleError, ValueError):
    """A module with forward hooks (which may change what it computes) was refused."""


class InputShapeRequiredError(UnboundedModuleError, ValueError):
    """The bound of a module with these arguments depends on the input size: pass ``input_shape``."""


class LipschitzModule(PicklableParametrizationMixin, nn.Module):
    """Base class of modules that report a guaranteed Lipschitz upper bound (see the module docstring).

    Parametrized subclasses can be saved whole: ``torch.save(model)`` / ``pickle`` / ``copy.deepcopy``.
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
