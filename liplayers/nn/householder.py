r"""Householder activation (Singla, Singla & Feizi 2022), a learned gradient-norm-preserving activation.

GroupSort on pairs (MaxMin) is a special case of a Householder reflection; Singla
et al. ("Improved deterministic l2 robustness on CIFAR-10 and CIFAR-100", ICLR 2022) make the
reflection learnable. Channels are split into pairs ``z = (a, b)`` — channel ``i`` with channel
``i + C/2`` along ``dim``, as in the authors' implementation — and each pair has a unit normal
``θ = (−sin(φ/2), cos(φ/2))`` with a learned angle ``φ``::

    σ_θ(z) = z                 if θᵀz ≥ 0,
             (I − 2θθᵀ) z      otherwise,      I − 2θθᵀ = [[cos φ, sin φ], [sin φ, −cos φ]].

The reflection ``R = I − 2θθᵀ`` fixes the hyperplane ``θᵀz = 0`` and maps the half-space
``θᵀz < 0`` onto ``θᵀz > 0``, so σ_θ is continuous, piecewise linear with pieces ``I`` and ``R``,
both orthogonal: it is 1-Lipschitz in L2 and its Jacobian is orthogonal almost everywhere
(gradient-norm preserving, GNP). With ``φ = π/2`` (the initialization) ``R`` swaps the pair and
σ_θ is exactly MaxMin on the pair: ``(a, b) ↦ (min, max)``.

In the ∞ norm the reflection is not 1-Lipschitz: ``‖R‖_{∞→∞} = |cos φ| + |sin φ| ≤ √2``
(:meth:`HouseholderActivation.linf_lipschitz_bound`).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ..lipschitz import LipschitzModule, feature_dim

__all__ = ["HouseholderActivation", "householder_activation"]


def householder_activation(x: Tensor, phi: Tensor, dim: int = 1) -> Tensor:
    r"""Functional form: reflect channel pairs ``(x_i, x_{i+C/2})`` along ``dim`` with angles ``phi``.

    Args:
        x: input ``(..., C, ...)`` with ``C`` even at ``dim``.
        phi: angles, shape ``(C/2,)`` (one per pair).
        dim: the channel dimension.

    Returns:
        Tensor of ``x``'s shape.
    """
    dim = dim % x.dim()
    C = x.shape[dim]
    if C % 2 != 0:
        raise ValueError(f"HouseholderActivation: the size {C} of dim {dim} must be even (channels go in pairs)")
    if phi.shape != (C // 2,):
        raise ValueError(f"phi must have shape ({C // 2},) for {C} channels, got {tuple(phi.shape)}")
    a, b = x.split(C // 2, dim=dim)
    shape = [1] * x.dim()
    shape[dim] = C // 2
    p = phi.reshape(shape).to(x.dtype)
    c, s = torch.cos(p), torch.sin(p)
    half = 0.5 * p
    keep = (-torch.sin(half) * a + torch.cos(half) * b) >= 0  # θᵀz ≥ 0
    ra = c * a + s * b
    rb = s * a - c * b
    return torch.cat((torch.where(keep, a, ra), torch.where(keep, b, rb)), dim=dim)


class HouseholderActivation(LipschitzModule):
    r"""Learned Householder activation of order 1 (Singla et al. 2022), see module docstring.

    Shapes: any input with ``channels`` (even) entries along ``dim`` (``dim=1`` for images
    ``(B, C, H, W)``, ``dim=-1`` for features ``(B, C)``); output has the same shape.
    Parameter ``phi`` of shape ``(channels/2,)``, initialized at ``π/2`` (= :class:`MaxMin`
    on the pairs ``(i, i + C/2)``).

    Guarantees: 1-Lipschitz in L2 and GNP (Jacobian orthogonal a.e.).
    :meth:`lipschitz_bound` returns the exact spectral norm of the computed pieces,
    ``max(1, max √(cos²φ + sin²φ))`` evaluated in the module's dtype (= 1 up to an ulp);
    :meth:`linf_lipschitz_bound` returns ``max(1, max |cos φ| + |sin φ|)`` (≤ √2).
    """

    def __init__(self, channels: int, dim: int = 1, device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2 or channels % 2:
            raise ValueError(f"channels must be a positive even integer, got {channels!r}")
        self.channels = channels
        self.dim = dim
        self.phi = nn.Parameter(torch.full((channels // 2,), math.pi / 2, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 0 or x.shape[self.dim] != self.channels:
            raise ValueError(f"HouseholderActivation({self.channels}, dim={self.dim}): input of shape "
                             f"{tuple(x.shape)} does not have {self.channels} channels at dim {self.dim}")
        return householder_activation(x, self.phi, self.dim)

    def _cos_sin(self) -> Tuple[Tensor, Tensor]:
        p = self.phi.detach()
        if not bool(torch.isfinite(p).all()):  # max(1.0, nan) would silently give 1.0
            raise ValueError("HouseholderActivation: the angles phi contain non-finite values (NaN or Inf)")
        return torch.cos(p).double(), torch.sin(p).double()

    def lipschitz_bound(self, input_shape: Optional[Tuple[int, ...]] = None) -> float:
        feature_dim(self, self.dim, input_shape)
        # R = [[c, s], [s, -c]] is symmetric with eigenvalues ±√(c² + s²): its exact norm
        c, s = self._cos_sin()
        return max(1.0, float(torch.sqrt(c * c + s * s).max()) * (1 + 4 * 2.0 ** -52))

    def linf_lipschitz_bound(self, input_shape: Optional[Tuple[int, ...]] = None) -> float:
        """∞→∞ bound: the larger of the pieces' norms, ``max(1, |cos φ| + |sin φ|)`` (≤ √2)."""
        feature_dim(self, self.dim, input_shape)
        c, s = self._cos_sin()
        return max(1.0, float((c.abs() + s.abs()).max()) * (1 + 4 * 2.0 ** -52))

    def to_torch(self) -> nn.Module:
        return self  # built from torch operations only

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim={self.dim}"
