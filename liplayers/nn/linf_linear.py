r"""L∞-Lipschitz dense layers (Anil, Lucas & Grosse 2019).

For a linear map ``x ↦ Wx`` the operator norm induced by the ∞ norm on both sides is the
largest row L1 norm::

    ‖W‖_{∞→∞} = max_i Σ_j |W_ij|

(attained at ``x = sign(w_i)`` for the row ``i`` of largest L1 norm).  So a layer whose every
row lies in the unit L1 ball is 1-Lipschitz from ``(Rⁿ, ‖·‖∞)`` to ``(Rᵐ, ‖·‖∞)``
(Anil, Lucas & Grosse 2019, "Sorting out Lipschitz function approximation").
:class:`LInfLinear` reads its weight through :class:`L1BallRows`, the Euclidean projection of
every row onto the L1 ball (:func:`liplayers.functional.project_l1_ball`, Condat 2016), in the
forward pass like the Björck parametrization.  GroupSort/MaxMin/FullSort permute coordinates,
so they are 1-Lipschitz in ∞ as well, and so is every coordinatewise 1-Lipschitz activation
(ReLU, …): :func:`liplayers.lipschitz.linf_lipschitz_bound_of` composes such bounds.

The ∞ bound is *not* an L2 bound: ``‖W‖₂ ≤ √(‖W‖_{1→1} ‖W‖_{∞→∞})`` can be larger than 1
(e.g. a row ``(½, ½)`` repeated). :meth:`LInfLinear.lipschitz_bound` therefore reports the
exact spectral norm (L2 protocol of :mod:`liplayers.lipschitz`) and
:meth:`LInfLinear.linf_lipschitz_bound` the max row L1 norm.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.nn.utils import parametrize

from ..lipschitz import linf_operator_norm
from ..parametrizations.l1_ball import L1BallRows
from ..utils import renamed_attribute
from .linear import _ParametrizedLinear

__all__ = ["LInfLinear"]

Shape = Optional[Tuple[int, ...]]


class LInfLinear(_ParametrizedLinear):
    r"""Linear layer 1-Lipschitz for the ∞ norm: y = x Wᵀ + b with every row ‖w_i‖₁ ≤ ``radius``.

    Drop-in for ``nn.Linear`` (same arguments, ``weight``/``bias``); shapes
    ``(*, in_features) → (*, out_features)``. The weight is read through :class:`L1BallRows`
    (Euclidean projection of each row onto the L1 ball in the forward pass), so
    ``‖W‖_{∞→∞} = max_i ‖w_i‖₁ ≤ radius`` (Anil, Lucas & Grosse 2019). Two bounds:

    * :meth:`linf_lipschitz_bound`: ∞→∞ bound, the measured max row L1 norm of the weight used
      in eval mode (guaranteed upper bound, see :func:`linf_operator_norm`).
    * :meth:`lipschitz_bound`: L2→L2 bound (the library's protocol), the exact spectral norm of
      that weight — possibly > 1 (up to ``radius·√min(in, out)``).

    Initialization: uniform ``±1/in_features`` rows (L1 norm ≤ 1 at most), bias 0.

    Args:
        in_features, out_features, bias, device, dtype: as for ``nn.Linear``.
        radius: the row L1 radius (the layer's ∞-Lipschitz constant), default 1.
        method: projection algorithm, ``"newton"`` (default), ``"sort"``, ``"condat"``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 *, radius: float = 1.0, method: str = "newton") -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        parametrize.register_parametrization(self, "weight", L1BallRows(radius=radius, method=method))

    def reset_parameters(self) -> None:
        w = self.parametrizations.weight.original if parametrize.is_parametrized(self, "weight") else self.weight
        with torch.no_grad():
            # rows with L1 norm ≈ 1: U(−1, 1)·(2/in) has E|w| = 1/in per entry
            w.uniform_(-1.0, 1.0).mul_(2.0 / max(1, self.in_features))
            if self.bias is not None:
                self.bias.zero_()

    projection = renamed_attribute("projection", "parametrization")

    def linf_lipschitz_bound(self, input_shape: Shape = None) -> float:
        """Guaranteed ∞→∞ Lipschitz bound: max row L1 norm of the weight used in eval mode."""
        return linf_operator_norm(self.eval_weight())


