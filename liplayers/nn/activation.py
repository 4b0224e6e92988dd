"""Gradient-norm-preserving activations: GroupSort, MaxMin, FullSort.

Sorting the entries of each group is a permutation of the input that depends on the input:
1-Lipschitz in L2 (and every Lp), piecewise linear, and its Jacobian is a permutation matrix
almost everywhere, so gradient norms are preserved exactly (Anil et al., 2019).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..functional.group_sort import group_sort
from ..lipschitz import LipschitzModule, UnboundedModuleError, feature_dim

__all__ = ["GroupSort", "MaxMin", "FullSort", "group_sort"]


class GroupSort(LipschitzModule):
    """Sort within groups of ``group_size`` along ``dim`` (default 1: torch's channel / feature dimension).

    Shape:
        - Input: ``(B, C, *)`` (or any shape with ``dim`` not the batch dimension).
        - Output: same shape.

    1-Lipschitz in L2 and ∞ and gradient-norm preserving. Raises ``ValueError`` when the size of
    ``dim`` is not divisible by ``group_size``. ``dim`` must not be the batch dimension (sorting
    across samples mixes them): the bounds refuse it.
    """

    def __init__(self, group_size: int = 2, dim: int = 1) -> None:
        super().__init__()
        if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
            raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
        self.group_size = group_size
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return group_sort(x, self.group_size, self.dim)

    def _check(self, input_shape) -> float:
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g < 1):
            raise UnboundedModuleError(f"{type(self).__name__}.group_size = {g!r} must be a positive int or None")
        feature_dim(self, self.dim, input_shape)
        return 1.0  # a permutation of the coordinates of each sample

    def lipschitz_bound(self, input_shape=None) -> float:
        return self._check(input_shape)

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        return self._check(input_shape)

    def to_torch(self) -> nn.Module:
        return self  # parameter-free; built from torch ops only

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class MaxMin(GroupSort):
    """GroupSort with groups of 2: (a, b) → (min(a, b), max(a, b)); same channel count."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__(2, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class FullSort(GroupSort):
    """GroupSort with a single group: sorts the whole ``dim``."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__(None, dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"
