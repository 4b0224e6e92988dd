r"""GroupSort-family and Householder activations written only with standard ONNX operators.

Drop-in replacements, for export, of :class:`~liplayers.nn.MaxMin`, :class:`~liplayers.nn.GroupSort`,
:class:`~liplayers.nn.FullSort` and :class:`~liplayers.nn.HouseholderActivation`: reshapes,
``Min`` / ``Max``, an ascending sort (ONNX ``TopK``), ``Where`` and ``Concat``, which every ONNX
runtime implements. They compute the same values as the layers they replace (sorting, ``Min``
and ``Max`` do no arithmetic). :func:`liplayers.onnx.prepare_for_onnx` swaps them in.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .activation import GroupSort
from .householder import HouseholderActivation

__all__ = ["OnnxMaxMin", "OnnxGroupSort", "OnnxHouseholder"]


def _channel_dim(dim: int, x: Tensor, name: str) -> int:
    if x.dim() == 0 or not -x.dim() <= dim < x.dim():
        raise ValueError(f"{name}: dim {dim} is out of range for an input of shape {tuple(x.shape)}")
    d = dim % x.dim()
    if d == 0:
        raise ValueError(f"{name}: dim {dim} is the batch dimension; sorting across samples mixes them")
    return d


class OnnxMaxMin(nn.Module):
    """MaxMin from ``Reshape``, ``Min``, ``Max`` and ``Concat`` only: ``(a, b) ↦ (min, max)``.

    Pairs are adjacent entries ``(2i, 2i + 1)`` along ``dim``, the minimum first — the same
    values as :func:`liplayers.functional.group_sort.max_min` for finite inputs.

    Shape: ``(B, *)`` → same shape; the size of ``dim`` must be even.

    Example:
        >>> import torch
        >>> OnnxMaxMin(dim=1)(torch.tensor([[3.0, 1.0, -2.0, 5.0]]))
        tensor([[ 1.,  3., -2.,  5.]])
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        d = _channel_dim(self.dim, x, "MaxMin")
        n = x.shape[d]
        if n % 2:
            raise ValueError(f"MaxMin: size {n} of dim {self.dim} is odd")
        pairs = x.unflatten(d, (n // 2, 2))
        a, b = pairs.select(d + 1, 0), pairs.select(d + 1, 1)
        return torch.stack((torch.minimum(a, b), torch.maximum(a, b)), d + 1).flatten(d, d + 1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class OnnxGroupSort(nn.Module):
    """GroupSort from ``Reshape`` and an ascending sort (ONNX ``TopK``) only.

    ``group_size=None`` sorts the whole ``dim`` (FullSort). Same values as
    :func:`liplayers.functional.group_sort.group_sort` for finite inputs.

    Shape: ``(B, *)`` → same shape; ``group_size`` must divide the size of ``dim``.

    Example:
        >>> import torch
        >>> OnnxGroupSort(4, dim=-1)(torch.tensor([[4.0, 2.0, 3.0, 1.0]]))
        tensor([[1., 2., 3., 4.]])
    """

    def __init__(self, group_size: Optional[int] = 2, dim: int = 1) -> None:
        super().__init__()
        self.group_size = group_size
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        d = _channel_dim(self.dim, x, "GroupSort")
        n = x.shape[d]
        g = n if self.group_size is None else self.group_size
        if g <= 1:
            return x
        if n % g:
            raise ValueError(f"GroupSort: size {n} of dim {self.dim} is not divisible by group_size {g}")
        if g == n:
            return torch.sort(x, dim=d).values
        return torch.sort(x.unflatten(d, (n // g, g)), dim=d + 1).values.flatten(d, d + 1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, dim={self.dim}"


class OnnxHouseholder(nn.Module):
    r"""A :class:`~liplayers.nn.HouseholderActivation` with its angles frozen into constants.

    Channel ``i`` is paired with channel ``i + C/2``; a pair ``z = (a, b)`` is kept where
    ``θᵀz ≥ 0`` and reflected by ``[[cos φ, sin φ], [sin φ, −cos φ]]`` elsewhere, with
    ``θ = (−sin(φ/2), cos(φ/2))``. The cosines and sines are computed once, by PyTorch, in the
    dtype of the activation's parameter, so the exported map computes the same products.

    Shape: ``(B, C, *)`` (``C`` at ``dim``) → same shape.
    """

    def __init__(self, activation: HouseholderActivation, dtype: Optional[torch.dtype] = None) -> None:
        super().__init__()
        self.dim = activation.dim
        self.channels = activation.channels
        with torch.no_grad():
            p = activation.phi.detach().to(dtype or activation.phi.dtype)
            half = 0.5 * p
            self.register_buffer("cos", torch.cos(p))
            self.register_buffer("sin", torch.sin(p))
            self.register_buffer("neg_sin_half", -torch.sin(half))
            self.register_buffer("cos_half", torch.cos(half))

    def forward(self, x: Tensor) -> Tensor:
        d = _channel_dim(self.dim, x, "HouseholderActivation")
        if x.shape[d] != self.channels:
            raise ValueError(f"HouseholderActivation: expected {self.channels} channels at dim {self.dim}, "
                             f"got shape {tuple(x.shape)}")
        shape = [1] * x.dim()
        shape[d] = self.channels // 2
        c, s = self.cos.reshape(shape), self.sin.reshape(shape)
        h = self.channels // 2
        a, b = x.narrow(d, 0, h), x.narrow(d, h, h)  # Slice: Split changed in opset 18
        keep = (self.neg_sin_half.reshape(shape) * a + self.cos_half.reshape(shape) * b) >= 0
        ra = c * a + s * b
        rb = s * a - c * b
        return torch.cat((torch.where(keep, a, ra), torch.where(keep, b, rb)), dim=d)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, dim={self.dim}"


def _replace_activations(module: nn.Module) -> nn.Module:
    if isinstance(module, GroupSort):
        g = module.group_size
        return OnnxMaxMin(module.dim) if g == 2 else OnnxGroupSort(g, module.dim)
    if isinstance(module, HouseholderActivation):
        return OnnxHouseholder(module)
    for name, child in list(module.named_children()):
        new = _replace_activations(child)
        if new is not child:
            setattr(module, name, new)
    return module
