"""Small gradient-norm-preserving (GNP) networks for 28×28 and 32×32 images.

Every layer is 1-Lipschitz and (away from zero-padded borders) gradient-norm preserving:
orthogonal convolutions (:class:`~liplayers.nn.OrthoConv2d`), MaxMin activations over
channels, strided blocks by invertible downsampling, a Björck dense head. The returned
:class:`~liplayers.nn.container.Sequential` reports a guaranteed ``lipschitz_bound`` (pass the
input shape for the tight FFT bounds).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..nn.activation import MaxMin
from ..nn.container import Sequential
from ..nn import OrthoConv2d
from ..nn.linear import BjorckLinear

__all__ = ["gnp_conv_net", "gnp_mlp"]


def gnp_conv_net(
    in_channels: int = 1,
    num_classes: int = 10,
    input_size: int = 28,
    width: int = 32,
    blocks: int = 2,
    convs_per_block: int = 2,
    kernel_size: int = 3,
    hidden: int = 256,
    padding_mode: str = "zeros",
) -> Sequential:
    r"""A GNP convolutional classifier: ``blocks`` stages, each halving the resolution.

    Architecture: for each stage b (width w_b = width·2^b):
    ``convs_per_block`` × [OrthoConv2d(·, w_b, k, padding='same') → MaxMin(dim=1)], then
    OrthoConv2d(w_b, 2·w_b, k, stride=2, padding='same') → MaxMin (an orthogonal stride-2
    convolution: pixel unshuffle + orthogonal conv, run as one strided conv). Head:
    Flatten → BjorckLinear(·, hidden) → MaxMin → BjorckLinear(hidden, num_classes).
    28×28 → 14 → 7; 32×32 → 16 → 8.

    Args:
        in_channels: image channels (1 for MNIST, 3 for CIFAR).
        num_classes: number of logits.
        input_size: H = W of the input; must be divisible by 2^blocks.
        width: channels of the first stage (even, for MaxMin).
        blocks, convs_per_block, kernel_size: depth and kernel of the convolutional trunk.
        hidden: width of the dense hidden layer (even); 0 for a single linear head.
        padding_mode: 'zeros' (norm ≤ 1 at borders) or 'circular' (exactly orthogonal convs).

    Returns:
        :class:`~liplayers.nn.container.Sequential`, input (B, in_channels, H, W) → (B, num_classes).
    """
    for name, v in (("in_channels", in_channels), ("num_classes", num_classes), ("input_size", input_size),
                    ("width", width), ("blocks", blocks), ("convs_per_block", convs_per_block),
                    ("kernel_size", kernel_size)):
        if not isinstance(v, int) or v < (0 if name in ("blocks", "convs_per_block") else 1):
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    if width % 2 or (hidden and hidden % 2):
        raise ValueError(f"width and hidden must be even (MaxMin pairs channels), got {width}, {hidden}")
    if input_size % (2 ** blocks):
        raise ValueError(f"input_size {input_size} must be divisible by 2^blocks = {2 ** blocks}")
    layers: list = []
    c, size, w = in_channels, input_size, width
    for _ in range(blocks):
        for _ in range(convs_per_block):
            layers += [OrthoConv2d(c, w, kernel_size, padding="same", padding_mode=padding_mode), MaxMin(dim=1)]
            c = w
        layers += [OrthoConv2d(c, 2 * w, kernel_size, stride=2, padding="same", padding_mode=padding_mode),
                   MaxMin(dim=1)]
        c, w, size = 2 * w, 2 * w, size // 2
    layers.append(nn.Flatten())
    flat = c * size * size
    if hidden:
        layers += [BjorckLinear(flat, hidden), MaxMin(dim=-1), BjorckLinear(hidden, num_classes)]
    else:
        layers.append(BjorckLinear(flat, num_classes))
    return Sequential(*layers)


def gnp_mlp(in_features: int, num_classes: int = 10, widths: Sequence[int] = (512, 256)) -> Sequential:
    """A dense GNP network: Flatten → [BjorckLinear → MaxMin]* → BjorckLinear(·, num_classes).

    Input (B, ...) with ``in_features`` entries per sample → (B, num_classes). Widths even.
    """
    if in_features < 1 or num_classes < 1:
        raise ValueError(f"in_features and num_classes must be positive, got {in_features}, {num_classes}")
    layers: list = [nn.Flatten()]
    d = in_features
    for w in widths:
        if w < 2 or w % 2:
            raise ValueError(f"hidden widths must be even and >= 2, got {w}")
        layers += [BjorckLinear(d, w), MaxMin(dim=-1)]
        d = w
    layers.append(BjorckLinear(d, num_classes))
    return Sequential(*layers)
