r"""L∞-Lipschitz dense layers and the ∞→∞ Lipschitz bound of a network (seed 004 §2.2.2).

For a linear map ``x ↦ Wx`` the operator norm induced by the ∞ norm on both sides is the
largest row L1 norm::

    ‖W‖_{∞→∞} = max_i Σ_j |W_ij|

(attained at ``x = sign(w_i)`` for the row ``i`` of largest L1 norm).  So a layer whose every
row lies in the unit L1 ball is 1-Lipschitz from ``(Rⁿ, ‖·‖∞)`` to ``(Rᵐ, ‖·‖∞)``
(Anil et al. 2019, "Sorting out Lipschitz function approximation", summarized in seed 004).
:class:`LInfLinear` reads its weight through :class:`L1BallRows`, the Euclidean projection of
every row onto the L1 ball (:func:`liplayers.functional.project_l1_ball`, Condat 2016), in the
forward pass like the Björck parametrization.  GroupSort/MaxMin/FullSort permute coordinates,
so they are 1-Lipschitz in ∞ as well, and so is every coordinatewise 1-Lipschitz activation
(ReLU, …): :func:`linf_lipschitz_bound_of` composes such bounds.

The ∞ bound is *not* an L2 bound: ``‖W‖₂ ≤ √(‖W‖_{1→1} ‖W‖_{∞→∞})`` can be larger than 1
(e.g. a row ``(½, ½)`` repeated). :meth:`LInfLinear.lipschitz_bound` therefore reports the
exact spectral norm (L2 protocol of :mod:`liplayers.lipschitz`) and
:meth:`LInfLinear.linf_lipschitz_bound` the max row L1 norm.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .activations import GroupSort
from .functional.l1_projection import project_l1_ball
from .linear import _ParametrizedLinear
from .lipschitz import BoundRegistry

__all__ = [
    "L1BallRows",
    "LInfLinear",
    "linf_operator_norm",
    "linf_lipschitz_bound_of",
    "register_linf_lipschitz_bound",
]

Shape = Optional[Tuple[int, ...]]


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


class L1BallRows(nn.Module):
    r"""Parametrization ``W = P_{B₁(r)}(V)`` row by row: every row of W has L1 norm ≤ ``radius``.

    Hence ``‖W‖_{∞→∞} ≤ radius`` (seed 004 §2.2.2, Anil et al. 2019; projection of Condat 2016,
    see :func:`~liplayers.functional.project_l1_ball`). The projection is applied in the forward
    pass (V is stored free, gradients flow through the projection's exact a.e. Jacobian). In
    eval mode the projected weight is cached per version of V.

    Args:
        radius: L1 radius ``r > 0`` of every row (default 1).
        method: ``"newton"`` (default), ``"sort"`` or ``"condat"``, see ``project_l1_ball``.
    """

    def __init__(self, radius: float = 1.0, method: str = "newton") -> None:
        super().__init__()
        if isinstance(radius, bool) or not isinstance(radius, (int, float)) or not radius > 0:
            raise ValueError(f"radius must be a positive number, got {radius!r}")
        if method not in ("newton", "sort", "condat"):
            raise ValueError(f"method must be 'newton', 'sort' or 'condat', got {method!r}")
        self.radius = float(radius)
        self.method = method
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tensor] = None

    def forward(self, v: Tensor) -> Tensor:
        if v.dim() != 2:
            raise ValueError(f"L1BallRows expects a 2-D weight (out, in), got shape {tuple(v.shape)}")
        if self.training:
            return project_l1_ball(v, self.radius, dim=-1, method=self.method)
        key = (v._version, v.data_ptr(), v.dtype, v.device, tuple(v.shape))
        if self._cache_key != key:
            with torch.no_grad():
                self._cache = project_l1_ball(v.detach(), self.radius, dim=-1, method=self.method)
            self._cache_key = key
        return self._cache

    def right_inverse(self, w: Tensor) -> Tensor:
        """Any weight is accepted; rows outside the ball are projected at the next forward."""
        return w

    def extra_repr(self) -> str:
        return f"radius={self.radius}, method={self.method!r}"


class LInfLinear(_ParametrizedLinear):
    r"""Linear layer 1-Lipschitz for the ∞ norm: y = x Wᵀ + b with every row ‖w_i‖₁ ≤ ``radius``.

    Drop-in for ``nn.Linear`` (same arguments, ``weight``/``bias``); shapes
    ``(*, in_features) → (*, out_features)``. The weight is read through :class:`L1BallRows`
    (Euclidean projection of each row onto the L1 ball in the forward pass), so
    ``‖W‖_{∞→∞} = max_i ‖w_i‖₁ ≤ radius`` (seed 004 §2.2.2, Anil et al. 2019). Two bounds:

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

    @property
    def projection(self) -> L1BallRows:
        return self.parametrizations.weight[0]

    def linf_lipschitz_bound(self, input_shape: Shape = None) -> float:
        """Guaranteed ∞→∞ Lipschitz bound: max row L1 norm of the weight used in eval mode."""
        return linf_operator_norm(self.eval_weight())


# ---------------------------------------------------------------- ∞→∞ bound of a network
LINF_BOUNDS = BoundRegistry(
    "∞→∞", "linf_lipschitz_bound",
    "use LInfLinear / GroupSort / ReLU, or register one with liplayers.linf.register_linf_lipschitz_bound",
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


@register_linf_lipschitz_bound(nn.Sequential)
def _linf_sequential(m: nn.Sequential, input_shape: Shape) -> float:
    return LINF_BOUNDS.compose(list(m), input_shape)


@register_linf_lipschitz_bound(nn.Linear)
def _linf_linear(m: nn.Linear, input_shape: Shape) -> float:
    w = m.eval_weight() if isinstance(m, _ParametrizedLinear) else m.weight
    return linf_operator_norm(w)


@register_linf_lipschitz_bound(GroupSort, nn.Identity, nn.Flatten, nn.Unflatten, nn.ReLU, nn.ReLU6,
                               nn.Tanh, nn.Hardtanh, nn.Dropout, nn.Softsign)
def _linf_one(m: nn.Module, input_shape: Shape) -> float:
    # permutations and coordinatewise 1-Lipschitz maps: |φ(a_i) − φ(b_i)| ≤ |a_i − b_i| ∀i
    return 1.0


@register_linf_lipschitz_bound(nn.LeakyReLU)
def _linf_leaky(m: nn.LeakyReLU, input_shape: Shape) -> float:
    return max(1.0, abs(float(m.negative_slope)))


@register_linf_lipschitz_bound(nn.ELU)
def _linf_elu(m: nn.ELU, input_shape: Shape) -> float:
    return max(1.0, float(m.alpha))


@register_linf_lipschitz_bound(nn.Sigmoid)
def _linf_sigmoid(m: nn.Module, input_shape: Shape) -> float:
    return 0.25
