"""Helpers shared by the layers: argument checks, initialization of the stored weight, export to
the plain torch layer."""
from __future__ import annotations

import math
from typing import Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.conv import _spatial
from ..functional.padding import _pair
from ..parametrizations._common import orthogonal_init_

Size2 = Union[int, Tuple[int, int]]


def _positive_int(layer: str, name: str, v) -> int:
    """``v`` if it is an int ≥ 1, else a ``ValueError`` naming the layer and the argument."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {v!r}")
    return v


def _input_hw(layer: nn.Module, input_shape, channels=None) -> Tuple[int, int]:
    """(H, W) of one sample's ``input_shape`` ((C, H, W) or (H, W)), checking C against ``channels``."""
    hw = _spatial(input_shape)
    shape = tuple(int(v) for v in input_shape)
    if channels is not None and len(shape) == 3 and shape[0] != channels:
        raise ValueError(f"{type(layer).__name__}: input_shape {shape} has {shape[0]} channels, expected {channels}")
    return hw


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



# ---- initialization ---------------------------------------------------------------------------
def _free_weight(module: nn.Module) -> Tensor:
    """The stored weight: ``parametrizations.weight.original`` once parametrized, else ``weight``
    (``nn.Linear`` / ``nn.Conv2d`` initialize before the parametrization is registered)."""
    if parametrize.is_parametrized(module, "weight"):
        return module.parametrizations.weight.original
    return module.weight


def _orthogonal_reset(module: nn.Module) -> None:
    """Orthogonal stored weight (as a matrix (out, rest)), zero bias."""
    w = _free_weight(module)
    with torch.no_grad():
        orthogonal_init_(w.view(w.shape[0], -1))
        if module.bias is not None:
            module.bias.zero_()


def _kaiming_reset(module: nn.Module) -> None:
    """``nn.Conv2d``'s kernel initialization of ``weight``, zero bias, eval cache cleared."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
        if module.bias is not None:
            module.bias.zero_()
    module._cache_key = None


# ---- export -----------------------------------------------------------------------------------
def _copy_into(layer: nn.Module, weight: Tensor, bias) -> nn.Module:
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _plain_linear(module: nn.Module, weight: Tensor) -> nn.Linear:
    """``nn.Linear`` with ``weight`` and the module's bias (the same map as the module in eval mode)."""
    lin = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device=weight.device,
                    dtype=weight.dtype)
    return _copy_into(lin, weight, module.bias)


def _plain_conv2d(module: nn.Module, kernel: Tensor, padding=None) -> nn.Conv2d:
    """``nn.Conv2d`` with the module's arguments (``padding`` if given), ``kernel`` and the module's bias."""
    conv = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                     module.padding if padding is None else padding, module.dilation, module.groups,
                     bias=module.bias is not None, padding_mode=module.padding_mode, device=kernel.device,
                     dtype=kernel.dtype)
    return _copy_into(conv, kernel, module.bias)
