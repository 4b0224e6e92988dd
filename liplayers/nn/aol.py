r"""Almost-orthogonal layers (AOL, Prach & Lampert, ECCV 2022): drop-ins for ``nn.Linear`` and ``nn.Conv2d``.

The stored weight P is read through the AOL rescaling W = P·D, D = diag(Σ_j Σ_t
|(PᵀP)_ij[t]|)^(-1/2) (:class:`~liplayers.parametrizations.aol.AOL`), which makes the layer
1-Lipschitz for *every* P at the cost of one small Gram product per training step — no
iteration, no estimate. The bound reported by ``lipschitz_bound`` is nevertheless computed
from the weight the layer uses in eval mode, never assumed.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.aol import gram_row_sum_bound
from ..functional.conv import conv2d_lipschitz_bound
from ..functional.spectral import spectral_norm_exact
from ..lipschitz import LipschitzModule
from ..parametrizations import eval_mode_weight, orthogonal_init_
from ..parametrizations._common import weight_parametrization
from ..parametrizations.aol import AOL, aol_padding_is_sound, check_aol_padding
from ._conv_common import _free_weight, _orthogonal_reset, _plain_conv2d, _plain_linear, _positive_int
from .linear import _load_plain_weight

__all__ = ["AOLLinear", "AOLConv2d"]

Size2 = Union[int, Sequence[int]]


class AOLLinear(nn.Linear, LipschitzModule):
    r"""Linear layer y = x (P·D)ᵀ + b with the AOL rescaling D (Prach & Lampert, 2022).

    Drop-in for ``nn.Linear`` (same arguments and defaults; ``weight`` is the rescaled matrix
    W = P·D, the free parameter is ``parametrizations.weight.original``). Guarantee: ‖W‖₂ ≤ 1
    for every P (D·PᵀP·D ⪯ I by the Schur test). P is initialized orthogonal, so the layer
    starts as an isometry (D = I when in ≤ out); the bias starts at zero. In eval mode W is
    cached per version of P: a forward costs an ``nn.Linear``. A plain ``nn.Linear`` state
    dict loads into it (its weight becomes P; the layer then uses P·D).

    Args:
        in_features, out_features, bias, device, dtype: as for ``nn.Linear``.

    Shape:
        - Input: (*, in_features)
        - Output: (*, out_features)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        _positive_int("AOLLinear", "in_features", in_features)
        _positive_int("AOLLinear", "out_features", out_features)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        parametrize.register_parametrization(self, "weight", AOL())
        self.register_load_state_dict_pre_hook(_load_plain_weight)

    parametrization = property(weight_parametrization)

    def reset_parameters(self) -> None:
        _orthogonal_reset(self)

    def eval_weight(self) -> Tensor:
        """The rescaled weight used in eval mode (detached), without changing the mode."""
        return eval_mode_weight(self)

    def lipschitz_bound(self, input_shape=None) -> float:
        """Exact (float64 SVD, +1e-9 relative) spectral norm of the eval-mode weight (≤ 1 + rounding)."""
        return float(spectral_norm_exact(self.eval_weight()))

    def to_torch(self) -> nn.Linear:
        """``nn.Linear`` with the eval-mode weight and the bias: identical outputs."""
        return _plain_linear(self, self.eval_weight())


class AOLConv2d(nn.Conv2d, LipschitzModule):
    r"""2-D convolution whose kernel is AOL-rescaled per input channel (Prach & Lampert, 2022).

    Drop-in for ``nn.Conv2d`` (same arguments and defaults, including ``padding=0``;
    ``weight`` is the rescaled kernel, the free kernel is ``parametrizations.weight.original``).
    The kernel's input channel i is multiplied by d_i = (Σ_j Σ_t |M_ij[t]|)^(-1/2), where
    M_ij[t] = Σ_o Σ_a P[o, i, a] P[o, j, a + t] is the self-correlation of the kernel (the
    Gram of the convolution operator; block-diagonal over groups).

    Guarantee (Theorem 2 of the paper, extended to paddings by embedding): the convolution has
    operator norm ≤ 1 for every P, every input size, stride and dilation, with zero padding of
    any amount or circular padding of at most the 'same' amount. Paddings that copy pixels
    (reflect, replicate, larger circular padding) are refused with ``ValueError``. The centre
    tap of P is initialized orthogonal (per group) and the other taps zero, so the layer
    starts as an orthogonal 1×1 convolution; the bias starts at zero. Eval mode caches the
    rescaled kernel per version of P. A plain ``nn.Conv2d`` state dict loads into it.

    Args:
        in_channels, ..., padding_mode, device, dtype: as for ``nn.Conv2d``.

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H', W') as ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = 0, dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        _positive_int("AOLConv2d", "in_channels", in_channels)
        _positive_int("AOLConv2d", "out_channels", out_channels)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        check_aol_padding(self.padding_mode, self.padding, self.kernel_size, self.dilation, "AOLConv2d")
        parametrize.register_parametrization(self, "weight", AOL(self.groups))
        self.register_load_state_dict_pre_hook(_load_plain_weight)

    parametrization = property(weight_parametrization)

    def reset_parameters(self) -> None:
        w = _free_weight(self)
        g = self.groups
        out_g = self.out_channels // g
        ch, cw = (self.kernel_size[0] - 1) // 2, (self.kernel_size[1] - 1) // 2
        with torch.no_grad():
            w.zero_()
            for i in range(g):
                orthogonal_init_(w[i * out_g:(i + 1) * out_g, :, ch, cw])
            if self.bias is not None:
                self.bias.zero_()

    def eval_weight(self) -> Tensor:
        """The rescaled kernel used in eval mode (detached), without changing the mode."""
        return eval_mode_weight(self)

    def lipschitz_bound(self, input_shape: Optional[Sequence[int]] = None) -> float:
        """Guaranteed bound of the eval-mode convolution, from its kernel.

        The minimum of :func:`~liplayers.functional.conv.conv2d_lipschitz_bound` (exact FFT
        norm for circular 'same' padding at ``input_shape``, padded-circular bound for zeros,
        symbol bound for every size when ``input_shape`` is None) and, when the padding is
        within AOL's guarantee (read now), the float64 weighted Gram row-sum bound
        (:func:`~liplayers.functional.aol.gram_row_sum_bound`, every size; 1 + ~1e-7 for an
        AOL kernel in float32).
        """
        k = self.eval_weight()
        bound = conv2d_lipschitz_bound(k, input_shape, self.stride, self.padding, self.dilation,
                                       self.padding_mode, self.groups)
        if aol_padding_is_sound(self.padding_mode, self.padding, self.kernel_size, self.dilation):
            bound = min(bound, gram_row_sum_bound(k, self.groups, log_q="perron"))
        return bound

    def to_torch(self) -> nn.Conv2d:
        """``nn.Conv2d`` with the eval-mode kernel and the bias: identical outputs."""
        return _plain_conv2d(self, self.eval_weight())
