r"""The convolutional networks of GloRo Nets: 4C3F and 6C2F.

Leino, Wang & Fredrikson, "Globally-Robust Neural Networks", ICML 2021: 4C3F is their MNIST
network for ε = 1.58, 6C2F their CIFAR-10 network. Down-sampling is by 4×4 stride-2
convolutions (no pooling), every hidden layer is followed by MinMax (here ``MaxMin(dim=1)``,
the same pairing up to the order of the pair). Here every layer comes from a 1-Lipschitz
family chosen by name (:mod:`liplayers.zoo._families`), so the returned network's
``lipschitz_bound(input_shape)`` is the product of the bounds of the layers actually built.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from torch import nn

from ..nn.container import Sequential
from ._families import (
    COMMON_ARGS,
    activation_factory,
    check_input,
    conv_layers,
    dense_layers,
    fill_doc,
    head_layer,
    scaled_width,
)

__all__ = ["gloro_4c3f", "gloro_6c2f"]

_FITTING = """
    Families without a stride (SLL, CPL, SOC, Cayley, BRO) compute a 4×4 stride-2 convolution
    as ``InvertibleDownsampling(2)`` followed by a 3×3 stride-1 layer of the family; residual
    families (SLL, CPL) change channels with ``ChannelPad`` (zeros appended) or
    ``FirstChannels``. Convolutions use 'same' zero padding (an integer padding of 1 for the
    4×4 stride-2 ones of ``nn.Conv2d``-based families, which gives H/2 outputs)."""

_SIZE = """input_size: H = W of the images (divisible by 4)."""

_OUTPUT = """Shape:
        - Input: (B, in_channels, input_size, input_size)
        - Output: (B, num_classes)

    Returns:
        :class:`~liplayers.nn.container.Sequential` (flat) with ``lipschitz_bound(input_shape)``."""


def _build(convs: Sequence[Tuple[int, int, int]], hidden: Sequence[int], conv, dense, activation, in_channels,
           num_classes, input_size, last_layer_normalized, width, arch: str) -> Sequential:
    check_input(in_channels, num_classes, input_size, 4, arch)
    act = activation_factory(activation)
    layers: List[nn.Module] = []
    c, size = in_channels, input_size
    for channels, k, s in convs:
        out = scaled_width(channels, width)
        layers += conv_layers(conv, c, out, k, stride=s, padding="same")
        layers.append(act())
        c, size = out, size // s
    layers.append(nn.Flatten())
    d = c * size * size
    for units in hidden:
        out = scaled_width(units, width)
        layers += dense_layers(dense, d, out)
        layers.append(act())
        d = out
    layers += head_layer(dense, d, num_classes, last_layer_normalized)
    return Sequential(*layers)


@fill_doc(fitting=_FITTING, args=COMMON_ARGS, size=_SIZE, output=_OUTPUT)
def gloro_4c3f(conv="bcop", dense="bjorck", activation=None, in_channels: int = 1, num_classes: int = 10,
               input_size: int = 28, last_layer_normalized: bool = False, width: float = 1.0) -> Sequential:
    r"""GloRo's 4C3F: four convolutions, three dense layers (Leino et al., ICML 2021; MNIST).

    Layers (widths at ``width=1``; "act" is the activation)::

        conv 32, 3×3, stride 1 – act – conv 32, 4×4, stride 2 – act
        conv 64, 3×3, stride 1 – act – conv 64, 4×4, stride 2 – act
        flatten – dense 512 – act – dense 512 – act – dense num_classes

    {fitting}

    {args}
        {size}

    {output}
    """
    return _build(((32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 4, 2)), (512, 512), conv, dense, activation,
                  in_channels, num_classes, input_size, last_layer_normalized, width, "gloro_4c3f")


@fill_doc(fitting=_FITTING, args=COMMON_ARGS, size=_SIZE, output=_OUTPUT)
def gloro_6c2f(conv="bcop", dense="bjorck", activation=None, in_channels: int = 3, num_classes: int = 10,
               input_size: int = 32, last_layer_normalized: bool = False, width: float = 1.0) -> Sequential:
    r"""GloRo's 6C2F: six convolutions, two dense layers (Leino et al., ICML 2021; CIFAR-10).

    Layers (widths at ``width=1``)::

        conv 32, 3×3, s1 – act – conv 32, 3×3, s1 – act – conv 32, 4×4, s2 – act
        conv 64, 3×3, s1 – act – conv 64, 3×3, s1 – act – conv 64, 4×4, s2 – act
        flatten – dense 512 – act – dense num_classes

    {fitting}

    {args}
        {size}

    {output}
    """
    return _build(((32, 3, 1), (32, 3, 1), (32, 4, 2), (64, 3, 1), (64, 3, 1), (64, 4, 2)), (512,), conv, dense,
                  activation, in_channels, num_classes, input_size, last_layer_normalized, width, "gloro_6c2f")
