"""Ready architectures: gradient-norm-preserving networks and the networks of the certified-robustness records.

Every builder returns a :class:`~liplayers.nn.container.Sequential` whose
``lipschitz_bound(input_shape)`` is the product of the bounds of the layers actually built.
The record architectures take the layer family by name (``conv='bcop'``, ``dense='bjorck'``,
see :data:`CONV_FAMILIES`, :data:`DENSE_FAMILIES`). :data:`PRESETS` names (architecture,
dataset) pairs: ``build_preset("6c2f-cifar10", conv="aol")``. :func:`load` returns a pretrained
network shipped with the package (``liplayers.zoo.load("mnist-l2-1.58")``).
"""
from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Tuple

from torch import nn

from ._families import CONV_FAMILIES, DENSE_FAMILIES, ChannelPad, FirstChannels, conv_layers, dense_layers
from .architectures import gnp_conv_net, gnp_mlp
from .downsize import DOWNSIZE_WIDTHS, downsize_convnet
from .gloro import gloro_4c3f, gloro_6c2f
from .liresnet import liresnet
from .lipconvnet import LIPCONVNET_DEPTHS, lipconvnet
from .pretrained import MODEL_CARDS, available, load, mnist_4c3f

__all__ = [
    "gnp_conv_net", "gnp_mlp",
    "gloro_4c3f", "gloro_6c2f", "lipconvnet", "LIPCONVNET_DEPTHS", "downsize_convnet", "DOWNSIZE_WIDTHS", "liresnet",
    "CONV_FAMILIES", "DENSE_FAMILIES", "ChannelPad", "FirstChannels", "conv_layers", "dense_layers",
    "Preset", "PRESETS", "build_preset", "load", "available", "MODEL_CARDS", "mnist_4c3f",
]

_DATASETS = {
    "mnist": dict(in_channels=1, num_classes=10, input_size=28),
    "cifar10": dict(in_channels=3, num_classes=10, input_size=32),
}


class Preset(NamedTuple):
    """An architecture with the arguments of one dataset (``build(**overrides)`` builds it)."""

    builder: Callable[..., nn.Module]
    dataset: str
    kwargs: Dict[str, object]

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """(channels, H, W) of one input."""
        return (int(self.kwargs["in_channels"]), int(self.kwargs["input_size"]), int(self.kwargs["input_size"]))

    def build(self, **overrides) -> nn.Module:
        return self.builder(**{**self.kwargs, **overrides})


def _preset(builder, dataset: str, **kwargs) -> Preset:
    return Preset(builder, dataset, {**_DATASETS[dataset], **kwargs})


#: named (architecture, dataset) presets
PRESETS: Dict[str, Preset] = {
    "4c3f-mnist": _preset(gloro_4c3f, "mnist"),
    "4c3f-cifar10": _preset(gloro_4c3f, "cifar10"),
    "6c2f-mnist": _preset(gloro_6c2f, "mnist"),
    "6c2f-cifar10": _preset(gloro_6c2f, "cifar10"),
    "lipconvnet-5-cifar10": _preset(lipconvnet, "cifar10", depth=5),
    "lipconvnet-10-cifar10": _preset(lipconvnet, "cifar10", depth=10),
    "lipconvnet-20-cifar10": _preset(lipconvnet, "cifar10", depth=20),
    "downsize-xs-cifar10": _preset(downsize_convnet, "cifar10", size="xs"),
    "downsize-s-cifar10": _preset(downsize_convnet, "cifar10", size="s"),
    "downsize-m-cifar10": _preset(downsize_convnet, "cifar10", size="m"),
    "liresnet-small-cifar10": _preset(liresnet, "cifar10", depth=6, base_width=128),
}


def build_preset(name: str, **overrides) -> nn.Module:
    """Build ``PRESETS[name]`` with keyword ``overrides`` (e.g. ``conv='aol'``, ``width=0.5``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {tuple(PRESETS)}")
    return PRESETS[name].build(**overrides)
