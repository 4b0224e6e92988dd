r"""A small LiResNet: linear residual convolutions x + conv(x) normalized as one operator.

Hu, Zou, Wang, Leino & Fredrikson, "Unlocking Deterministic Robustness Certification on ImageNet",
NeurIPS 2023. The backbone block is the *linear* residual map x + conv(x), a single
convolution with the identity added to its centre tap, so its Lipschitz constant is the
operator norm of that one kernel (tight), not the product 1 + ‖conv‖ of a residual bound; the
nonlinearity (MinMax) comes after the sum. Stem, neck and dense layers come from 1-Lipschitz
families chosen by name (:mod:`liplayers.zoo._families`); the blocks are
:class:`~liplayers.nn.residual_conv.LinearResidualConv2d` (normalized as a whole block, so
each block is 1-Lipschitz at the configured size).
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
    dense_layers,
    fill_doc,
    head_layer,
    scaled_width,
)

__all__ = ["liresnet"]


def _residual_block():
    try:
        from ..nn.residual_conv import LinearResidualConv2d
    except ImportError as exc:  # pragma: no cover - present in this version
        raise ImportError("liresnet needs liplayers.nn.residual_conv.LinearResidualConv2d, which is not available "
                          "in this installation of liplayers") from exc
    return LinearResidualConv2d


@fill_doc(args=COMMON_ARGS)
def liresnet(depth: int = 6, conv="bcop", dense="bjorck", activation=None, in_channels: int = 3,
             num_classes: int = 10, input_size: int = 32, last_layer_normalized: bool = False,
             width: float = 1.0, base_width: int = 128, hidden: int = 512, kernel_size: int = 3,
             normalize: str = "block") -> Sequential:
    r"""A LiResNet (Hu et al., NeurIPS 2023) — small by default: 6 blocks of 128 channels.

    With W = ``base_width``·``width``, H = ``input_size``::

        stem:     conv W, 5×5, stride 2 – act                               (H/2)
        backbone: depth × [LinearResidualConv2d(W, k×k): x + conv(x) – act]
        neck:     conv 2W, 4×4, stride 4, 'valid' – act                      (H/8)
        flatten – dense hidden – act – dense num_classes

    as in the GloRo library's LiResNet (the paper's CIFAR-10 model is L12W512 with a larger
    neck and dense part; its later version replaces the neck). Families without a stride
    compute the stem as ``InvertibleDownsampling(2)`` and a 3×3 layer, the neck as
    ``InvertibleDownsampling(4)`` and a 1×1 layer (SLL and CPL change channels with
    ``ChannelPad`` / ``FirstChannels``).

    Each block is normalized by the exact operator norm of x + conv(x) on the block's input
    size (``normalize='block'``; ``'conv'`` normalizes only the branch, the block is then
    ≤ 2-Lipschitz; ``None`` leaves it unnormalized, for training with the bound in the loss):
    the bound reported is that of the combined kernel actually used, whatever the choice.

    {args}
        depth: number of residual blocks.
        input_size: H = W of the images (divisible by 8).
        base_width: W before ``width``.
        hidden: width of the hidden dense layer before ``width``.
        kernel_size: odd kernel of the residual convolutions.
        normalize: ``'block'``, ``'conv'`` or ``None`` (see above).

    Shape:
        - Input: (B, in_channels, input_size, input_size)
        - Output: (B, num_classes)

    Returns:
        :class:`~liplayers.nn.container.Sequential` (flat) with ``lipschitz_bound(input_shape)``.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"liresnet: depth must be a non-negative integer, got {depth!r}")
    check_input(in_channels, num_classes, input_size, 8, "liresnet")
    block = _residual_block()
    act = activation_factory(activation)
    w = scaled_width(base_width, width)
    size = input_size // 2
    layers: List[nn.Module] = conv_layers(conv, in_channels, w, 5, stride=2, padding="same") + [act()]
    for _ in range(depth):
        layers += [block(w, w, kernel_size, normalize=normalize, input_size=(size, size)), act()]
    layers += conv_layers(conv, w, 2 * w, 4, stride=4, padding="valid") + [act(), nn.Flatten()]
    size //= 4
    h = scaled_width(hidden, width)
    layers += dense_layers(dense, 2 * w * size * size, h) + [act()]
    layers += head_layer(dense, h, num_classes, last_layer_normalized)
    return Sequential(*layers)
