"""Convolutions normalized by their operator norm: SpectralConv2d (FFT / power iteration), RKOConv2d."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.conv import _spatial, circular_conv2d, conv2d_lipschitz_bound, resolve_padding, window_multiplicity
from ..functional.spectral import spectral_norm_exact
from ..lipschitz import InputShapeRequiredError, LipschitzModule
from ..parametrizations._common import eval_mode_weight, version_key, weight_parametrization
from ..parametrizations.operator_norm import OperatorNormalized as _OperatorNormalized
from ..parametrizations.rko import RKONormalized as _RKONormalized
from ..utils import accepts_renamed_kwargs, renamed_attribute
from ._conv_common import Size2, _check_padding_mode, _normalize_conv_padding, _orthogonal_reset, _plain_conv2d
from .linear import _load_plain_weight

__all__ = ["SpectralConv2d", "RKOConv2d"]


class _ConvLipschitzMixin(LipschitzModule):
    """Shared eval-weight / export / bound code for parametrized ``nn.Conv2d`` subclasses."""

    parametrization = property(weight_parametrization)

    def eval_weight(self) -> Tensor:
        return eval_mode_weight(self)

    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval operator (:func:`conv2d_lipschitz_bound` of its kernel)."""
        return conv2d_lipschitz_bound(self.eval_weight(), input_shape, self.stride, self.padding,
                                      self.dilation, self.padding_mode, self.groups)

    def _prepare(self, input: Tensor) -> None:
        """Eager set-up before the weight is read (SpectralConv2d: the input size)."""

    # Eager under torch.compile (one graph break per layer): the weight map reads parameter
    # versions, on which a compiled graph does not guard, and runs data-dependent iterations.
    # Tracing the convolution after that break would not help: the break isolates it in a graph of
    # its own (inductor only adds layout copies there), and torch's parametrize gives every
    # instance its own class, so that graph would be recompiled for every layer and mode.
    @torch.compiler.disable
    def forward(self, input: Tensor) -> Tensor:
        self._prepare(input)
        return self._conv_forward(input, self.weight, self.bias)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if (self.padding_mode == "circular" and self.stride == (1, 1)
                and all(p0 == p1 for p0, p1 in zip(self._reversed_padding_repeated_twice[::2],
                                                     self._reversed_padding_repeated_twice[1::2]))
                and all(self.dilation[i] * (self.kernel_size[i] - 1) == 2 * self._reversed_padding_repeated_twice[2 - 2 * i]
                        for i in range(2))):
            return circular_conv2d(input, weight, bias, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)

    def to_torch(self) -> nn.Conv2d:
        """``nn.Conv2d`` with the eval-mode kernel and the bias: identical outputs."""
        return _plain_conv2d(self, self.eval_weight())



class SpectralConv2d(_ConvLipschitzMixin, nn.Conv2d):
    r"""``nn.Conv2d`` whose kernel is divided by the spectral norm of its convolution operator.

    Drop-in for ``nn.Conv2d`` (subclass; ``weight`` is the normalized kernel, the free kernel
    is ``parametrizations.weight.original``; a plain ``nn.Conv2d`` state dict loads into it, its
    ``weight`` becoming the free kernel). Shapes as ``nn.Conv2d``. Unlike normalizing the
    reshaped kernel (``torch.nn.utils.spectral_norm``, which can leave the operator norm well
    above 1), the normalization is by the norm of the operator at the configured input size:

    * training: power iteration on the operator and its adjoint (autograd), persistent
      buffer, ``n_power_iterations`` per step, σ differentiable (Miyato et al. 2018);
    * eval: the exact FFT norm, so the eval operator has norm ≤ 1 (= 1 for circular padding;
      for zero padding the normalizer is the circular convolution on the zero-padded grid,
      a guaranteed upper bound of the zero-padded operator's norm, tight up to border effects).

    ``input_size``, the spatial size (H, W) of the inputs, fixes that size; if None it is taken from
    the first forward. The weight map is :attr:`parametrization` (an ``OperatorNormalized``).
    :meth:`lipschitz_bound` computes a guaranteed bound of the eval operator for the given
    ``input_shape`` (size-independent, slightly above 1, when None). While the size is unknown
    (no ``input_size``, no forward yet), :meth:`lipschitz_bound`, :meth:`eval_weight` and
    :meth:`to_torch` given an ``input_shape`` use the kernel an eval forward on inputs of that
    shape would use (normalized at that size; the layer is not modified), and refuse with
    :class:`~liplayers.lipschitz.InputShapeRequiredError` without one.

    Args:
        in_channels, ..., padding_mode: as ``nn.Conv2d`` (padding default 0; ``'same'`` is also
            accepted with stride > 1 for odd kernels, as (k − 1)/2); padding_mode ``'zeros'`` or
            ``'circular'``.
        input_size: the spatial size (H, W) of the inputs, or None.
        n_power_iterations: power-iteration steps per training forward.
    """

    @accepts_renamed_kwargs({"power_iterations": "n_power_iterations"})
    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = 0, dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *,
                 input_size: Optional[Sequence[int]] = None, n_power_iterations: int = 1) -> None:
        _check_padding_mode(padding_mode, ("zeros", "circular"), "SpectralConv2d")
        if n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be >= 1, got {n_power_iterations}")
        padding = _normalize_conv_padding(padding, kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        param = _OperatorNormalized(self.kernel_size, self.stride, self.padding, self.dilation, padding_mode,
                                    groups, input_size, n_power_iterations)
        parametrize.register_parametrization(self, "weight", param)
        self.register_load_state_dict_pre_hook(_load_plain_weight)

    normalizer = renamed_attribute("normalizer", "parametrization")

    def eval_weight(self, input_shape=None) -> Tensor:
        """The kernel used in eval mode, detached (``input_shape`` needed only while the size is unknown)."""
        param = self.parametrization
        if param.input_size is not None:
            return eval_mode_weight(self)
        if input_shape is None:
            raise InputShapeRequiredError(
                "SpectralConv2d: the kernel is normalized at the input size, which is not known yet: pass "
                "input_shape=(C, H, W), input_size=(H, W) at construction, or run a forward")
        return self._pending_weight(_spatial(input_shape)).clone()

    @torch.compiler.disable  # the version check must run on every call
    def _pending_weight(self, hw) -> Tensor:
        """The eval kernel for inputs of spatial size ``hw`` before the size is fixed: V / ‖A_V‖ with the
        norm of the same majorant at that size (what the first forward on such inputs fixes), cached."""
        v = self.parametrizations.weight.original
        if not bool(torch.isfinite(v).all()):
            raise ValueError("SpectralConv2d: the kernel contains non-finite values (NaN or Inf)")
        key = version_key(v) + (tuple(hw), self.padding_mode)
        cache = getattr(self, "_pending_cache", None)
        if cache is None or cache[0] != key:
            param = self.parametrization
            probe = _OperatorNormalized(param.kernel_size, param.stride, param.padding, param.dilation,
                                        param.padding_mode, param.groups, tuple(hw), 1)
            with torch.no_grad():
                w = (v.detach().to(torch.float64) / probe.exact_norm(v)).to(v.dtype)
            self._pending_cache = cache = (key, w)
        return cache[1]

    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval operator (:func:`conv2d_lipschitz_bound` of the kernel used)."""
        return conv2d_lipschitz_bound(self.eval_weight(input_shape), input_shape, self.stride, self.padding,
                                      self.dilation, self.padding_mode, self.groups)

    def to_torch(self, input_shape=None) -> nn.Conv2d:
        """``nn.Conv2d`` with the eval-mode kernel and the bias: identical outputs (``input_shape``
        needed only while the input size is unknown)."""
        return _plain_conv2d(self, self.eval_weight(input_shape))

    def _prepare(self, input: Tensor) -> None:
        if input.dim() in (3, 4) and self.parametrization.input_size is None:
            self.parametrization.set_input_size(tuple(input.shape[-2:]))  # the first forward fixes the size

    @torch.compiler.disable  # see _ConvLipschitzMixin.forward
    def forward(self, input: Tensor) -> Tensor:
        self._prepare(input)
        return self._conv_forward(input, self.weight, self.bias)



class RKOConv2d(_ConvLipschitzMixin, nn.Conv2d):
    r"""Reshaped-kernel orthogonal convolution rescaled to be provably 1-Lipschitz.

    The kernel reshaped to W = (out, in·kh·kw) is made (semi-)orthonormal by Björck
    (retraction mode, see :class:`~liplayers.parametrizations.BjorckOrthonormal`) and
    multiplied by 1/sqrt(m_h·m_w), where m = the largest number of patches (im2col columns)
    one input pixel belongs to per axis (m = ⌈k/s⌉ for dilation 1; k for stride 1).

    Proof: conv(x) = W · U(x) with U the patch extraction (zero padding only drops entries);
    U is a 0/1 selection matrix, so UᵀU = diag(#patches reading each pixel) ⪯ m_h m_w I and
    ‖conv‖ ≤ ‖W‖₂ sqrt(m_h m_w) = 1 · sqrt(m_h m_w) for zero padding and for circular 'same'
    padding with a grid divisible by the stride. The factor is tight in the worst case (W with
    orthonormal columns, or rows aligned with a constant patch: the DC gain is then
    sqrt(m_h m_w)), so no larger fixed factor is sound; typical kernels lose gradient norm
    (the operator's singular values spread below 1). :meth:`lipschitz_bound` reports the
    exact/FFT bound of the kernel used, which is usually well below 1.

    Drop-in for ``nn.Conv2d`` (subclass; ``weight`` is the rescaled kernel, the free kernel is
    ``parametrizations.weight.original``; a plain ``nn.Conv2d`` state dict loads into it).
    Shapes as ``nn.Conv2d``.

    Args: as ``nn.Conv2d`` (padding default 0; padding_mode 'zeros' or 'circular'; groups 1);
    ``tol``, ``max_iterations``: Björck settings.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = 0, dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *, tol: Optional[float] = None,
                 max_iterations: int = 40) -> None:
        _check_padding_mode(padding_mode, ("zeros", "circular"), "RKOConv2d")
        if groups != 1:
            raise ValueError("RKOConv2d: groups must be 1")
        padding = _normalize_conv_padding(padding, kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        m = 1
        for k, s, d in zip(self.kernel_size, self.stride, self.dilation):
            m *= window_multiplicity(None, k, s, 0, d)
        self.patch_multiplicity = m
        param = _RKONormalized(1.0 / math.sqrt(m), tol=tol, max_iterations=max_iterations)
        parametrize.register_parametrization(self, "weight", param)
        self.register_load_state_dict_pre_hook(_load_plain_weight)

    def reset_parameters(self) -> None:
        _orthogonal_reset(self)

    def lipschitz_bound(self, input_shape=None) -> float:
        """min(FFT / symbol bound of the kernel used, sqrt(m)·‖reshaped kernel‖₂ when valid)."""
        k = self.eval_weight()
        bound = conv2d_lipschitz_bound(k, input_shape, self.stride, self.padding, self.dilation,
                                       self.padding_mode, 1)
        hw = _spatial(input_shape)
        structural_ok = self.padding_mode == "zeros" or self.stride == (1, 1) or (
            hw is not None and hw[0] % self.stride[0] == 0 and hw[1] % self.stride[1] == 0)
        if structural_ok:
            pads = resolve_padding(self.padding, self.kernel_size, self.dilation)
            span = [self.dilation[i] * (self.kernel_size[i] - 1) for i in range(2)]
            if self.padding_mode == "zeros" or all(pads[i][0] + pads[i][1] == span[i] for i in range(2)):
                rko = math.sqrt(self.patch_multiplicity) * float(spectral_norm_exact(k.reshape(k.shape[0], -1)))
                bound = min(bound, rko)
        return bound


