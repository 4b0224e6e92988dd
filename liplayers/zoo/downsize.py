r"""The "Downsize" ConvNet of the 1-Lipschitz layer comparison (sizes XS, S, M, L).

Prach, Brau, Buttazzo & Lampert, "1-Lipschitz Layers Compared: Memory, Speed, and Certifiable
Robustness", CVPR 2024: one architecture in which every 1-Lipschitz convolution family is
compared. Every convolution maps c channels to c (stride 1), so *every* family fits it
without adapters, including the residual ones (SLL, CPL); the resolution is halved by a
parameter-free, norm-non-increasing step: keep the first c/2 channels, then a pixel unshuffle
(c/2 → 2c channels, H → H/2). Here every layer comes from a family chosen by name
(:mod:`liplayers.zoo._families`), so the returned network's ``lipschitz_bound(input_shape)``
is the product of the bounds of the layers actually built.
"""
from __future__ import annotations

from typing import List

from torch import nn

from ..nn.container import Sequential
from ..nn.pooling import InvertibleDownsampling
from ._families import (
    COMMON_ARGS,
    ChannelPad,
    FirstChannels,
    activation_factory,
    check_input,
    conv_layers,
    dense_layers,
    fill_doc,
    head_layer,
    scaled_width,
)

__all__ = ["downsize_convnet", "DOWNSIZE_WIDTHS"]

#: base width w of each size (the paper's ConvNetXS, S, M, L)
DOWNSIZE_WIDTHS = {"xs": 16, "s": 32, "m": 64, "l": 128}


@fill_doc(args=COMMON_ARGS)
def downsize_convnet(size: str = "s", conv="bcop", dense="bjorck", activation=None, in_channels: int = 3,
                     num_classes: int = 10, input_size: int = 32, last_layer_normalized: bool = False,
                     width: float = 1.0, blocks: int = 5, layers_per_block: int = 5,
                     kernel_size: int = 3) -> Sequential:
    r"""The Downsize ConvNet of Prach et al. (CVPR 2024), sizes ``'xs'``, ``'s'``, ``'m'``, ``'l'``.

    With w the base width (XS 16, S 32, M 64, L 128, times ``width``) and c_i = w·2^i::

        ChannelPad(w) – conv w, 1×1 – act
        for i = 0..blocks−1:                      (H_i = input_size / 2^i)
            layers_per_block × [conv c_i, k×k – act]   (k = kernel_size; 1×1 in the last block)
            FirstChannels(c_i / 2) – InvertibleDownsampling(2)      (→ 2c_i channels, H_i / 2)
        AdaptiveMaxPool2d(1) – flatten – dense c, c – FirstChannels(num_classes)

    with c = w·2^blocks (512 for S). The paper uses 5 blocks of 5 layers and a 32×32 input, so
    the maximum pooling sees a 1×1 map (the identity). The head is a c → c layer of the dense
    family followed by the first ``num_classes`` outputs, as in the paper (whose head is a 1×1
    convolution of the conv family on the 1×1 map, or a dense layer for the families with
    one); ``last_layer_normalized=True`` replaces both by a last-layer-normalized c →
    ``num_classes`` layer. All convolutions have stride 1 and 'same' zero padding.

    Parameter-free steps and their bounds: ``ChannelPad`` (an isometry), ``FirstChannels``
    (a coordinate projection), ``InvertibleDownsampling`` (a permutation), global max pooling
    (|max a − max b| ≤ max |a − b| per channel): each is 1-Lipschitz.

    {args}
        size: ``'xs'``, ``'s'``, ``'m'`` or ``'l'``.
        input_size: H = W of the images (divisible by 2^blocks).
        blocks, layers_per_block, kernel_size: depth and kernel of the trunk (5, 5, 3 in the paper).

    Shape:
        - Input: (B, in_channels, input_size, input_size)
        - Output: (B, num_classes)

    Returns:
        :class:`~liplayers.nn.container.Sequential` (flat) with ``lipschitz_bound(input_shape)``.
    """
    if size not in DOWNSIZE_WIDTHS:
        raise ValueError(f"downsize_convnet: size must be one of {tuple(DOWNSIZE_WIDTHS)}, got {size!r}")
    for name, v in (("blocks", blocks), ("layers_per_block", layers_per_block), ("kernel_size", kernel_size)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"downsize_convnet: {name} must be a positive integer, got {v!r}")
    check_input(in_channels, num_classes, input_size, 2 ** blocks, "downsize_convnet")
    w = scaled_width(DOWNSIZE_WIDTHS[size], width)
    if in_channels > w:
        raise ValueError(f"downsize_convnet: in_channels ({in_channels}) exceeds the base width ({w})")
    c_final = w * 2 ** blocks
    if num_classes > c_final:
        raise ValueError(f"downsize_convnet: num_classes ({num_classes}) exceeds the final width ({c_final})")
    act = activation_factory(activation)
    layers: List[nn.Module] = []
    if in_channels < w:
        layers.append(ChannelPad(w))
    layers += conv_layers(conv, w, w, 1)
    layers.append(act())
    c = w
    for i in range(blocks):
        k = kernel_size if i < blocks - 1 else 1
        for _ in range(layers_per_block):
            layers += conv_layers(conv, c, c, k)
            layers.append(act())
        layers += [FirstChannels(c // 2), InvertibleDownsampling(2)]
        c *= 2
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    if last_layer_normalized:
        layers += head_layer(dense, c, num_classes, True)
    else:
        layers += dense_layers(dense, c, c) + [FirstChannels(num_classes)]
    return Sequential(*layers)
