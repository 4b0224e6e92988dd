r"""Layer families by name, and the adapters that fit any family into an architecture.

A *family* is a kind of 1-Lipschitz layer (BCOP, AOL, SLL, CPL, SOC, Cayley, BRO, spectral
normalization, RKO for convolutions; Björck, AOL, Cholesky, spectral, BRO, SLL, CPL for dense
layers). The architectures of :mod:`liplayers.zoo` take a family name (or a constructor with
``nn.Conv2d`` / ``nn.Linear``'s signature) and ask this module for "a k×k convolution from
c_in to c_out channels with stride s" or "a dense layer from n_in to n_out features". Families
that cannot do what is asked are fitted with parameter-free, exactly norm-preserving adapters:

* **stride** (families without a native stride: SLL, CPL, SOC, Cayley, BRO): an invertible
  downsampling (pixel unshuffle, a permutation: c → c·s² channels, H → H/s) followed by a
  stride-1 layer of the family with the coarse kernel ⌈k/s⌉, rounded up to an odd size
  (3×3 for a 4×4 stride-2 request, 1×1 for a 4×4 stride-4 one), as in the SOC paper;
* **channel change** (residual families, which map c channels to c: SLL, CPL):
  :class:`ChannelPad` (zero channels appended: an isometry) before, or :class:`FirstChannels`
  (a coordinate projection: norm 1) before the layer, as in Prach et al. (2024).

Each adapter reports its bound (1), so the bound of an architecture is the product of the
bounds of the layers actually built. Families are imported when first used: a family whose
module is missing from this installation raises an ``ImportError`` naming it.
"""
from __future__ import annotations

import copy
import importlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Union

import torch
from torch import Tensor, nn

from ..lipschitz import LipschitzModule, int_arg
from ..nn.activation import MaxMin
from ..nn.pooling import InvertibleDownsampling

__all__ = [
    "CONV_FAMILIES", "DENSE_FAMILIES", "ConvFamily", "DenseFamily", "ChannelPad", "FirstChannels",
    "conv_layers", "dense_layers", "head_layer", "activation_factory", "scaled_width", "check_input",
    "COMMON_ARGS", "fill_doc",
]

ConvSpec = Union[str, Callable[..., nn.Module]]
DenseSpec = Union[str, Callable[..., nn.Module]]


# ---- adapters ---------------------------------------------------------------------------------
class ChannelPad(LipschitzModule):
    """Append zero channels along dim 1 up to ``channels``: an isometry (‖pad(x)‖ = ‖x‖).

    Shape:
        - Input: (B, C, *) with C ≤ ``channels``
        - Output: (B, channels, *)
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"ChannelPad: channels must be a positive integer, got {channels!r}")
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] > self.channels:
            raise ValueError(f"ChannelPad({self.channels}) expects (B, C, *) with C <= {self.channels}, "
                             f"got {tuple(x.shape)}")
        extra = self.channels - x.shape[1]
        if extra == 0:
            return x
        return torch.cat([x, x.new_zeros((x.shape[0], extra, *x.shape[2:]))], dim=1)

    def lipschitz_bound(self, input_shape=None) -> float:
        int_arg(self, "channels")
        return 1.0  # x ↦ (x, 0) preserves norms

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        int_arg(self, "channels")
        return 1.0

    def to_torch(self) -> nn.Module:
        return self  # parameter-free; built from torch ops only

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class FirstChannels(LipschitzModule):
    """Keep the first ``channels`` entries of dim 1: a coordinate projection, norm 1.

    Shape:
        - Input: (B, C, *) with C ≥ ``channels``
        - Output: (B, channels, *)
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"FirstChannels: channels must be a positive integer, got {channels!r}")
        self.channels = channels

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[1] < self.channels:
            raise ValueError(f"FirstChannels({self.channels}) expects (B, C, *) with C >= {self.channels}, "
                             f"got {tuple(x.shape)}")
        return x[:, :self.channels]

    def lipschitz_bound(self, input_shape=None) -> float:
        int_arg(self, "channels")
        return 1.0  # dropping coordinates never increases a norm

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        int_arg(self, "channels")
        return 1.0

    def to_torch(self) -> nn.Module:
        return self

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


# ---- registries ---------------------------------------------------------------------------------
def _load(kind: str, name: str, target: str) -> type:
    module, _, attr = target.partition(":")
    full = f"liplayers.nn.{module}"
    try:
        mod = importlib.import_module(f"..nn.{module}", __package__)
    except ModuleNotFoundError as exc:
        if exc.name not in (full, None):
            raise
        raise ImportError(f"{kind} family {name!r} needs {full}.{attr}, which is not available in this "
                          f"installation of liplayers") from exc
    cls = getattr(mod, attr, None)
    if cls is None:
        raise ImportError(f"{kind} family {name!r} needs {full}.{attr}, which is not available in this "
                          f"installation of liplayers")
    return cls


@dataclass(frozen=True)
class ConvFamily:
    """A convolutional family: where its layer lives and what it can do natively.

    Attributes:
        name: registry key.
        target: ``"module:Class"`` under :mod:`liplayers.nn`.
        strides: accepts ``stride > 1`` itself (else: invertible downsampling first).
        residual: the layer maps c channels to c and takes ``(channels, kernel_size=...)``.
        odd_kernel: needs an odd kernel ('same' padding about a centre tap).
        same_with_stride: accepts ``padding='same'`` with a stride (else integer padding is passed).
        reference: the paper.
    """

    name: str
    target: str
    strides: bool
    residual: bool
    odd_kernel: bool
    same_with_stride: bool
    reference: str

    def load(self) -> type:
        return _load("conv", self.name, self.target)


@dataclass(frozen=True)
class DenseFamily:
    """A dense family (see :class:`ConvFamily`); residual ones take ``(features)`` only."""

    name: str
    target: str
    residual: bool
    reference: str

    def load(self) -> type:
        return _load("dense", self.name, self.target)


CONV_FAMILIES: Dict[str, ConvFamily] = {f.name: f for f in (
    ConvFamily("bcop", "conv_bcop:OrthoConv2d", True, False, False, True, "Li et al., NeurIPS 2019"),
    ConvFamily("aol", "aol:AOLConv2d", True, False, False, False, "Prach & Lampert, ECCV 2022"),
    ConvFamily("sll", "sll:SLLConv2d", False, True, True, False, "Araujo et al., ICLR 2023"),
    ConvFamily("cpl", "cpl:CPLConv2d", False, True, True, False, "Meunier et al., ICML 2022"),
    ConvFamily("soc", "soc:SOCConv2d", False, False, True, False, "Singla & Feizi, ICML 2021"),
    ConvFamily("cayley", "cayley:CayleyConv2d", False, False, True, False, "Trockman & Kolter, ICLR 2021"),
    ConvFamily("bro", "bro:BROConv2d", False, False, True, False, "Lai et al., ICML 2025"),
    ConvFamily("spectral", "conv_normalized:SpectralConv2d", True, False, False, False, "Miyato et al., ICLR 2018"),
    ConvFamily("rko", "conv_normalized:RKOConv2d", True, False, False, False, "Li et al., NeurIPS 2019"),
)}

DENSE_FAMILIES: Dict[str, DenseFamily] = {f.name: f for f in (
    DenseFamily("bjorck", "linear:BjorckLinear", False, "Anil, Lucas & Grosse, ICML 2019"),
    DenseFamily("aol", "aol:AOLLinear", False, "Prach & Lampert, ECCV 2022"),
    DenseFamily("cholesky", "cholesky:CholeskyLinear", False, "Hu et al., ICLR 2024"),
    DenseFamily("spectral", "linear:SpectralLinear", False, "Miyato et al., ICLR 2018"),
    DenseFamily("bro", "bro:BROLinear", False, "Lai et al., ICML 2025"),
    DenseFamily("sll", "sll:SLLLinear", True, "Araujo et al., ICLR 2023"),
    DenseFamily("cpl", "cpl:CPLLinear", True, "Meunier et al., ICML 2022"),
)}


def _family(table: dict, kind: str, name: str):
    if name not in table:
        raise ValueError(f"unknown {kind} family {name!r}; expected one of {tuple(table)} or a constructor")
    return table[name]


# ---- builders -----------------------------------------------------------------------------------
def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")
    return v


def _strided_padding(k: int, s: int) -> int:
    """Symmetric zero padding p with ⌊(H + 2p − k)/s⌋ + 1 = H/s for H divisible by s (k − s ≤ 2p < k)."""
    return max(0, math.ceil((k - s) / 2))


def _channel_adapters(c_in: int, c_out: int) -> List[nn.Module]:
    if c_in > c_out:
        return [FirstChannels(c_out)]
    if c_in < c_out:
        return [ChannelPad(c_out)]
    return []


def conv_layers(conv: ConvSpec, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                padding: str = "same") -> List[nn.Module]:
    r"""The layers computing a k×k, stride-s convolution of family ``conv`` (see the module docstring).

    Args:
        conv: a name of :data:`CONV_FAMILIES` or a constructor with ``nn.Conv2d``'s signature
            (called as ``conv(in, out, k, stride=s, padding=p)``; 'same' with a stride is passed
            as the integer padding that gives H/s outputs).
        in_channels, out_channels, kernel_size, stride: as ``nn.Conv2d`` (square kernel and stride).
        padding: ``'same'`` (H → H/s for H divisible by s) or ``'valid'``.

    Returns:
        A list of modules to apply in order (the layer, possibly with adapters).
    """
    for n, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kernel_size),
                 ("stride", stride)):
        _positive(n, v)
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")
    if not isinstance(conv, str):
        if not callable(conv):
            raise ValueError(f"conv must be a family name or a constructor, got {conv!r}")
        pad = _strided_padding(kernel_size, stride) if (padding == "same" and stride > 1) else padding
        return [conv(in_channels, out_channels, kernel_size, stride=stride, padding=pad)]
    fam = _family(CONV_FAMILIES, "conv", conv)
    cls = fam.load()
    layers: List[nn.Module] = []
    k, s, c_in = kernel_size, stride, in_channels
    if s > 1 and not fam.strides:
        layers.append(InvertibleDownsampling(s))
        c_in, k = c_in * s * s, -(-k // s)
        if padding == "valid" and k > 1:
            raise ValueError(f"conv family {conv!r} has no stride and only 'same' padding: a 'valid' {kernel_size}×"
                             f"{kernel_size} stride-{stride} convolution cannot be fitted (kernel_size <= stride can)")
        if fam.odd_kernel and k % 2 == 0:
            k += 1
        s, padding = 1, "same"
    elif fam.odd_kernel and k % 2 == 0:
        raise ValueError(f"conv family {conv!r} needs odd kernel sizes, got {kernel_size}")
    elif not fam.strides and padding == "valid" and k > 1:
        raise ValueError(f"conv family {conv!r} only has 'same' padding")
    if fam.residual:
        layers += _channel_adapters(c_in, out_channels)
        layers.append(cls(channels=out_channels, kernel_size=k))
        return layers
    if s > 1 and not fam.same_with_stride:
        pad = _strided_padding(k, s) if padding == "same" else 0
    else:
        pad = padding
    layers.append(cls(c_in, out_channels, k, stride=s, padding=pad))
    return layers


def dense_layers(dense: DenseSpec, in_features: int, out_features: int) -> List[nn.Module]:
    """The layers computing a dense map of family ``dense`` from ``in_features`` to ``out_features``.

    ``dense``: a name of :data:`DENSE_FAMILIES` or a constructor with ``nn.Linear``'s signature.
    Residual families (SLL, CPL) get :class:`ChannelPad` / :class:`FirstChannels` adapters.
    """
    _positive("in_features", in_features)
    _positive("out_features", out_features)
    if not isinstance(dense, str):
        if not callable(dense):
            raise ValueError(f"dense must be a family name or a constructor, got {dense!r}")
        return [dense(in_features, out_features)]
    fam = _family(DENSE_FAMILIES, "dense", dense)
    cls = fam.load()
    if fam.residual:
        return _channel_adapters(in_features, out_features) + [cls(out_features)]
    return [cls(in_features, out_features)]


def head_layer(dense: DenseSpec, in_features: int, num_classes: int, last_layer_normalized: bool) -> List[nn.Module]:
    """The last layer: ``dense`` family, or a last-layer-normalized head (unit-norm rows)."""
    if not last_layer_normalized:
        return dense_layers(dense, in_features, num_classes)
    try:
        from ..nn.last_layer import LastLayerNormalizedLinear
    except ImportError as exc:  # pragma: no cover - present in this version
        raise ImportError("last_layer_normalized=True needs liplayers.nn.last_layer.LastLayerNormalizedLinear, "
                          "which is not available in this installation of liplayers") from exc
    return [LastLayerNormalizedLinear(in_features, num_classes)]


def activation_factory(activation) -> Callable[[], nn.Module]:
    """A function returning a fresh activation module per call.

    ``None`` → ``MaxMin(dim=1)``; a module → deep copies of it; a class or function → its calls.
    """
    if activation is None:
        return lambda: MaxMin(dim=1)
    if isinstance(activation, nn.Module):
        return lambda: copy.deepcopy(activation)
    if callable(activation):
        return activation
    raise ValueError(f"activation must be None, a module or a callable returning one, got {activation!r}")


def scaled_width(base: int, width: float, name: str = "width") -> int:
    """``base·width`` rounded to an even integer ≥ 2 (MaxMin pairs channels)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"{name} must be a positive number, got {width!r}")
    return max(2, 2 * int(round(base * width / 2)))


COMMON_ARGS = """Args:
        conv: convolution family name (``'bcop'``, ``'aol'``, ``'sll'``, ``'cpl'``, ``'soc'``,
            ``'cayley'``, ``'bro'``, ``'spectral'``, ``'rko'``) or a constructor with
            ``nn.Conv2d``'s signature.
        dense: dense family name (``'bjorck'``, ``'aol'``, ``'cholesky'``, ``'spectral'``,
            ``'bro'``, ``'sll'``, ``'cpl'``) or a constructor with ``nn.Linear``'s signature.
        activation: module (copied per use) or factory; default ``MaxMin(dim=1)``.
        in_channels, num_classes: image channels and number of logits.
        last_layer_normalized: the last layer is a
            :class:`~liplayers.nn.last_layer.LastLayerNormalizedLinear` (unit-norm rows; not
            1-Lipschitz: certify it with the pairwise row-difference rule).
        width: multiplier of every hidden width (rounded to even numbers)."""


def fill_doc(**parts: str):
    """Decorator: format ``{name}`` fields of a docstring (kept working under ``python -OO``)."""
    def deco(fn):
        if fn.__doc__:
            fn.__doc__ = fn.__doc__.format(**{k: v.strip() for k, v in parts.items()})
        return fn
    return deco


def check_input(in_channels, num_classes, input_size, divisor: int, arch: str) -> None:
    """Validate the common builder arguments; ``input_size`` must be divisible by ``divisor``."""
    _positive("in_channels", in_channels)
    _positive("num_classes", num_classes)
    _positive("input_size", input_size)
    if input_size % divisor:
        raise ValueError(f"{arch}: input_size must be divisible by {divisor}, got {input_size} "
                         f"(pad the images, e.g. 28 → 32)")
