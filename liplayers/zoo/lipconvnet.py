r"""LipConvNet-N: the orthogonal-convolution networks of Singla & Feizi.

Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021, and Singla, Singla & Feizi,
"Improved deterministic l2 robustness on CIFAR-10 and CIFAR-100", ICLR 2022 (which adds the
last-layer normalization). N = 5·b convolutions in five stages of b layers; the last layer of
each stage has stride 2 and doubles the channels, so a 32×32 image ends as 1×1 with 32·init
channels. Every convolution is followed by MaxMin. Here every layer comes from a 1-Lipschitz
family chosen by name (:mod:`liplayers.zoo._families`), so the returned network's
``lipschitz_bound(input_shape)`` is the product of the bounds of the layers actually built.
"""
from __future__ import annotations

from typing import List

from torch import nn

from ..nn.container import Sequential
from ._families import (
    COMMON_ARGS,
    activation_factory,
    check_input,
    conv_layers,
    fill_doc,
    head_layer,
    scaled_width,
)

__all__ = ["lipconvnet", "LIPCONVNET_DEPTHS"]

#: the depths of the papers' tables (any positive multiple of 5 is accepted)
LIPCONVNET_DEPTHS = (5, 10, 15, 20, 25, 30, 35, 40)


@fill_doc(args=COMMON_ARGS)
def lipconvnet(depth: int = 10, conv="bcop", dense="bjorck", activation=None, in_channels: int = 3,
               num_classes: int = 10, input_size: int = 32, last_layer_normalized: bool = False,
               width: float = 1.0, init_channels: int = 32) -> Sequential:
    r"""LipConvNet-``depth`` (Singla & Feizi, ICML 2021; ICLR 2022).

    With b = depth / 5 and c₀ = ``init_channels``·``width`` (32 by default), stage i = 1..5
    (input channels c, output 2·p with p = c₀ for stage 1 and p = c after)::

        (b − 1) × [conv p, 3×3, stride 1 – act]       (the first maps c → p)
        conv 2p, k×k, stride 2 – act                  (k = 3; k = 1 in stage 5)

    then flatten and one dense layer to ``num_classes`` (or the last-layer-normalized head
    with ``last_layer_normalized=True``, the ICLR 2022 variant). For a 32×32 input with
    c₀ = 32 the stages end at 64×16², 128×8², 256×4², 512×2², 1024×1². The papers' head is a
    1×1 convolution of the conv family applied to the flattened features: the same map as a
    dense layer, which is what ``dense`` chooses here.

    Strided layers: BCOP, AOL, spectral and RKO stride natively (BCOP, like SOC, as a pixel
    unshuffle followed by a stride-1 orthogonal convolution); SOC, Cayley, BRO, SLL and CPL
    get an ``InvertibleDownsampling(2)`` followed by a stride-1 layer with a 3×3 kernel (1×1
    in stage 5), exactly as the SOC code does; SLL and CPL change channels with
    ``ChannelPad`` / ``FirstChannels``.

    {args}
        depth: number of convolutions N, a positive multiple of 5 (the papers use 5 to 40).
        input_size: H = W of the images (divisible by 32).
        init_channels: channels of stage 1 before ``width`` (32 in the papers).

    Shape:
        - Input: (B, in_channels, input_size, input_size)
        - Output: (B, num_classes)

    Returns:
        :class:`~liplayers.nn.container.Sequential` (flat) with ``lipschitz_bound(input_shape)``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 5 or depth % 5:
        raise ValueError(f"lipconvnet: depth must be a positive multiple of 5, got {depth!r}")
    check_input(in_channels, num_classes, input_size, 32, "lipconvnet")
    act = activation_factory(activation)
    per_stage = depth // 5
    layers: List[nn.Module] = []
    c, size = in_channels, input_size
    for stage in range(5):
        planes = scaled_width(init_channels, width) if stage == 0 else c
        for j in range(per_stage):
            last = j == per_stage - 1
            stride = 2 if last else 1
            k = 1 if (last and stage == 4) else 3
            out = planes * stride
            layers += conv_layers(conv, c, out, k, stride=stride, padding="same")
            layers.append(act())
            c = out
        size //= 2
    layers.append(nn.Flatten())
    layers += head_layer(dense, c * size * size, num_classes, last_layer_normalized)
    return Sequential(*layers)
