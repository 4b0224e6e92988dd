"""Reshaped-kernel orthogonalization (RKO) of a convolution kernel as a weight map."""
from __future__ import annotations

from torch import Tensor, nn

from .bjorck import BjorckOrthonormal

__all__ = ["RKONormalized"]


class RKONormalized(nn.Module):
    """Parametrization K ↦ scale · reshape(polar(reshape(K, (out, in·kh·kw)))) (Björck)."""

    def __init__(self, scale: float, **bjorck_kwargs) -> None:
        super().__init__()
        self.scale = scale
        self.bjorck = BjorckOrthonormal(**bjorck_kwargs)

    def forward(self, v: Tensor) -> Tensor:
        w = self.bjorck(v.reshape(v.shape[0], -1))
        return w.reshape(v.shape) * self.scale

    def right_inverse(self, w: Tensor) -> Tensor:
        return w


