"""Argument checks shared by the convolution layers."""
from __future__ import annotations

from typing import Sequence, Tuple, Union

from ..functional.conv import _pair

Size2 = Union[int, Tuple[int, int]]


def _check_padding_mode(mode: str, allowed: Sequence[str], layer: str) -> None:
    if mode not in allowed:
        if mode in ("reflect", "replicate"):
            raise ValueError(
                f"{layer}: padding_mode={mode!r} copies border pixels (the padding operator has norm up to "
                f"sqrt(3) or more), so the layer cannot be orthogonal or 1-Lipschitz; use one of {tuple(allowed)}"
            )
        raise ValueError(f"{layer}: padding_mode must be one of {tuple(allowed)}, got {mode!r}")


def _normalize_conv_padding(padding, kernel_size, stride, dilation):
    """nn.Conv2d rejects 'same' with stride > 1: map it to the symmetric (k−1)/2·d padding."""
    ks, st, dl = _pair(kernel_size), _pair(stride), _pair(dilation)
    if padding == "same" and st != (1, 1):
        if any(d * (k - 1) % 2 for k, d in zip(ks, dl)):
            raise ValueError("padding='same' with stride > 1 needs an odd (dilated) kernel size")
        return tuple(d * (k - 1) // 2 for k, d in zip(ks, dl))
    return padding

