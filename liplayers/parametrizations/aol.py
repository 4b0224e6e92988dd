r"""Almost-orthogonal (AOL) rescaling as a weight map (``torch.nn.utils.parametrize``)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.aol import aol_rescale
from ._common import EvalCachedMap, compute_dtype as _compute_dtype, version_key as _version_key

__all__ = ["AOL", "aol", "aol_padding_is_sound", "check_aol_padding"]


def aol_padding_is_sound(padding_mode: str, padding, kernel_size, dilation) -> bool:
    """Whether AOL's guarantee covers this padding: zeros (any amount), or circular padding of
    at most the 'same' amount on every axis (larger circular padding, reflect and replicate
    copy pixels, which can raise the norm by up to the square root of the copy count)."""
    if padding_mode == "zeros":
        return True
    if padding_mode != "circular":
        return False
    ks, dil = tuple(kernel_size), tuple(dilation)
    if isinstance(padding, str):
        return padding in ("same", "valid")
    pads = tuple(padding) if not isinstance(padding, int) else (padding,) * len(ks)
    return all(2 * p <= d * (k - 1) for p, k, d in zip(pads, ks, dil))


def check_aol_padding(padding_mode: str, padding, kernel_size, dilation, layer: str) -> None:
    """Raise ``ValueError`` for paddings outside AOL's guarantee (see :func:`aol_padding_is_sound`)."""
    if padding_mode in ("reflect", "replicate"):
        raise ValueError(
            f"{layer}: padding_mode={padding_mode!r} copies border pixels, so the rescaled convolution is "
            "not guaranteed to be 1-Lipschitz (the padding operator alone has norm up to sqrt(3) per axis); "
            "use padding_mode='zeros' or 'circular'")
    if padding_mode not in ("zeros", "circular"):
        raise ValueError(f"{layer}: padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
    if not aol_padding_is_sound(padding_mode, padding, kernel_size, dilation):
        raise ValueError(
            f"{layer}: circular padding {padding!r} exceeds the 'same' amount dilation·(kernel_size − 1)/2 "
            "per side: it wraps pixels twice, so the layer would not be 1-Lipschitz; use 'same' or less")


class AOL(EvalCachedMap):
    r"""Parametrization ``W = P·D``: almost-orthogonal rescaling (Prach & Lampert, ECCV 2022).

    D = diag(d), d_i = (Σ_j Σ_t |(PᵀP)_ij[t]|)^(-1/2): for a dense weight (out, in) the sum is
    over the row of |PᵀP| (one shift t); for a convolution kernel (out, in/groups, k…) the
    Gram is the self-correlation of the kernel over the input channels, summed over all
    shifts (:func:`~liplayers.functional.aol.aol_rescale`). Then W (as a matrix, or as a
    convolution with zero padding or circular padding up to 'same', any stride/dilation and
    input size) has operator norm ≤ 1 for *every* P: the guarantee needs no iteration and no
    estimate, and an orthogonal P is left unchanged (PᵀP = I gives D = I).

    Training: W is recomputed (differentiably) at every access, in float32 at least. Eval: W
    is computed once per version of the stored P (in-place updates, ``load_state_dict``,
    moves) and cached, so an eval forward costs a plain layer.

    Args:
        groups: groups of the convolution the kernel belongs to (1 for dense weights).

    Shape:
        P: (out, in) or (out, in/groups, k₁, …, k_d); W: the same.
    """

    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"AOL: groups must be a positive integer, got {groups!r}")
        self.groups = groups

    def _rescale(self, v: Tensor) -> Tensor:
        if v.dim() < 2:
            raise ValueError(f"AOL expects a matrix or a convolution kernel, got shape {tuple(v.shape)}")
        return aol_rescale(v.to(_compute_dtype(v.dtype)), self.groups).to(v.dtype)

    def _eval_key(self, v: Tensor) -> tuple:
        return (_version_key(v), self.groups)

    def _compute_eval(self, v: Tensor) -> Tensor:
        w = self._rescale(v)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("AOL: the weight contains non-finite values (NaN or Inf)")
        return w

    def forward(self, v: Tensor) -> Tensor:
        if not self.training:
            return self._eval_weight(v)
        return self._rescale(v)

    def right_inverse(self, w: Tensor) -> Tensor:
        """Assigning a weight stores it as P (the layer then uses its AOL rescaling)."""
        return w

    def extra_repr(self) -> str:
        return f"groups={self.groups}"


def aol(module: nn.Module, name: str = "weight", *, groups: Optional[int] = None) -> nn.Module:
    r"""Read ``module.<name>`` through the :class:`AOL` rescaling; returns ``module``.

    Like ``torch.nn.utils.parametrizations.orthogonal``: the stored tensor becomes
    ``module.parametrizations.<name>.original`` (P) and ``module.<name>`` is P·D. For a
    convolution (``nn.Conv1d/2d/3d`` and their transposes) ``groups`` is read from the
    module, and the padding is checked to be within the guarantee (zeros, or circular of at
    most the 'same' amount; reflect and replicate raise ``ValueError``). For other modules
    the tensor must be a matrix (out, in) or a kernel (out, in/groups, k…) used as such.

    Example::

        >>> layer = aol(nn.Conv2d(16, 32, 3, padding=1))
        >>> layer.weight.shape
        torch.Size([32, 16, 3, 3])
    """
    weight = getattr(module, name, None)
    if not isinstance(weight, Tensor):
        raise ValueError(f"aol: module {type(module).__name__} has no tensor {name!r}")
    if weight.dim() < 2:
        raise ValueError(f"aol: {name!r} must be a matrix or a convolution kernel, got shape {tuple(weight.shape)}")
    if isinstance(module, nn.modules.conv._ConvNd) and name == "weight":
        if groups is None:
            groups = module.groups
        elif groups != module.groups:
            raise ValueError(f"aol: groups={groups} differs from the module's groups={module.groups}")
        if not module.transposed:
            check_aol_padding(module.padding_mode, module.padding, module.kernel_size, module.dilation,
                              f"aol({type(module).__name__})")
    groups = 1 if groups is None else groups
    if weight.dim() == 2 and groups != 1:
        raise ValueError(f"aol: a matrix has no groups, got groups={groups}")
    if weight.dim() > 2 and weight.shape[0] % groups:
        raise ValueError(f"aol: {weight.shape[0]} output channels are not divisible by groups={groups}")
    parametrize.register_parametrization(module, name, AOL(groups))
    return module
