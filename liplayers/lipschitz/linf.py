r"""The ∞→∞ Lipschitz bound registry (L∞ threat model).

For a linear map ``x ↦ Wx`` the operator norm induced by the ∞ norm on both sides is the
largest row L1 norm ``‖W‖_{∞→∞} = max_i Σ_j |W_ij|``. GroupSort/MaxMin/FullSort permute
coordinates, so they are 1-Lipschitz in ∞ as well, and so is every coordinatewise 1-Lipschitz
activation. An L2 bound is never reused as an ∞ bound (they differ by up to √n).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .protocol import Shape
from .registry import BoundRegistry

__all__ = ["LINF_BOUNDS", "linf_operator_norm", "linf_lipschitz_bound_of", "register_linf_lipschitz_bound"]



def linf_operator_norm(w: Tensor) -> float:
    r"""Guaranteed upper bound of ``‖w‖_{∞→∞} = max_i ‖w_i‖₁`` for a 2-D weight ``(out, in)``.

    Summed in float64 and inflated by ``(1 + (n+1)·2⁻⁵²)`` to cover the rounding of the sum
    (the result is an upper bound of the exact norm of the stored numbers).
    """
    if not isinstance(w, Tensor) or w.dim() != 2:
        raise ValueError(f"linf_operator_norm expects a 2-D weight (out, in), got "
                         f"{tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__}")
    if w.is_complex():
        raise TypeError("linf_operator_norm expects a real weight")
    if not bool(torch.isfinite(w.detach()).all()):
        raise ValueError("linf_operator_norm: the weight contains non-finite values (NaN or Inf)")
    n = w.shape[1]
    s = float(w.detach().to(torch.float64).abs().sum(-1).max()) if w.numel() else 0.0
    return s * (1.0 + (n + 1) * 2.0 ** -52)


# ---------------------------------------------------------------- ∞→∞ bound of a network
LINF_BOUNDS = BoundRegistry(
    "∞→∞", "linf_lipschitz_bound",
    "use LInfLinear / GroupSort / ReLU, or register one with liplayers.lipschitz.register_linf_lipschitz_bound",
)
register_linf_lipschitz_bound = LINF_BOUNDS.register


def linf_lipschitz_bound_of(module: nn.Module, input_shape: Shape = None) -> float:
    r"""Guaranteed upper bound of the Lipschitz constant of ``module`` from ∞ norm to ∞ norm.

    ``input_shape`` excludes the batch dimension (propagated through containers; no layer
    here needs it). Known: modules with a ``linf_lipschitz_bound()`` method (:class:`LInfLinear`
    and anything following that protocol), ``nn.Linear`` and every dense liplayers layer
    (max row L1 norm of the weight used in eval), the GroupSort family (permutations: 1),
    coordinatewise activations with their usual constants (ReLU, LeakyReLU, Tanh, ...),
    Identity/Flatten/Unflatten/Dropout (eval), and ``nn.Sequential``/:class:`liplayers.Sequential`
    (product of their layers' bounds). Anything else — including a subclass of a known type
    that overrides ``forward`` — raises :class:`~liplayers.lipschitz.UnboundedModuleError`
    naming it: an L2 bound is never reused as an ∞ bound (they differ by up to √n).
    """
    return LINF_BOUNDS.bound_of(module, input_shape)
