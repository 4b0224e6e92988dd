r"""SDP-based Lipschitz layers (SLL, Araujo, Havens, Delattre, Allauzen & Hu, ICLR 2023).

    h(x) = x − 2 W T⁻¹ ReLU(Wᵀ x + b),   T = diag(t),   t_i = Σ_j |WᵀW|_ij q_j / q_i,

with q a learnable positive vector. By the weighted Schur test T ⪰ WᵀW (QTQ − QWᵀWQ is
diagonally dominant), so A = W T^(-1/2) has ‖A‖ ≤ 1; the Jacobian I − 2 A S Aᵀ
(S = diag(ReLU') ∈ [0, 1]) is symmetric with eigenvalues in [−1, 1]: the layer is
1-Lipschitz for *every* W, b and q (Theorem 3 of the paper), with no norm estimate at all.
Replacing t by anything larger keeps the guarantee (that is how zero rows are handled).

For a convolution, Wᵀx is a 'same' convolution K (``channels`` → ``inner_channels``, odd
kernel, stride 1, zero or circular padding) and W its exact adjoint; WᵀW is then KKᵀ, a
convolution over the inner channels whose kernel is the self-correlation of K, and
t_i = Σ_j Σ_shifts |(KKᵀ)_ij[shift]| q_j/q_i dominates it on every input size (see
:mod:`liplayers.functional.aol`). Storage convention here: ``weight`` is Wᵀ, of shape
(inner, features) as for ``nn.Linear``, or the kernel K (inner, channels, k, k).

Export: a residual nonlinear map has no single ``torch.nn`` equivalent, so ``to_torch`` raises
``NotImplementedError`` and :func:`~liplayers.nn.export` keeps these layers; in eval mode they
use standard operators only, with T⁻¹ a constant of the graph, and ``torch.onnx.export``
(``dynamo=False``) exports them as they run.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.aol import abs_gram, gram_row_sum_bound, weighted_row_sums
from ..functional.conv import conv2d_lipschitz_bound
from ..functional.spectral import spectral_norm_exact
from ..lipschitz import LipschitzModule
from ..parametrizations._common import compute_dtype, version_key
from ._conv_common import _positive_int
from .cpl import (_check_input, _check_mode, _conv, _conv_adjoint, _init_residual_params, _no_plain_equivalent,
                  _reset_residual_params, _residual_conv_args, _scaled_relu, _untraced)

__all__ = ["SLLLinear", "SLLConv2d"]

_MARGIN = 1.0 + 1e-9


def _inverse_t(weight: Tensor, log_q: Tensor) -> Tensor:
    """τ = 1/t (inner,) in ``weight``'s dtype; t from the output-side Gram of ``weight``, in
    float32 at least, raised to a tiny floor (differentiable)."""
    w = weight.to(compute_dtype(weight.dtype))
    t = weighted_row_sums(abs_gram(w.transpose(0, 1)), log_q)
    fl = torch.finfo(t.dtype)
    floor = (t.detach().max() * fl.eps).clamp_min(fl.tiny ** 0.5)
    return (1.0 / t.clamp_min(floor)).clamp_max(torch.finfo(weight.dtype).max).to(weight.dtype)


class _SLLBase(LipschitzModule):
    """Parameters, eval cache and bound shared by the dense and convolutional SLL layers."""

    weight: nn.Parameter
    log_q: nn.Parameter

    def _init_params(self, inner: int, shape, bias: bool, fan_in: int, device, dtype) -> None:
        _init_residual_params(self, shape, bias, device, dtype)
        self.log_q = nn.Parameter(torch.zeros(inner, device=device, dtype=dtype))  # q = exp(log_q) > 0
        self._fan_in = fan_in
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W Xavier-normal, b uniform in ±1/sqrt(fan_in), q = 1 (as the paper's code)."""
        _reset_residual_params(self, self._fan_in)
        with torch.no_grad():
            self.log_q.zero_()

    @torch.compiler.disable  # the version check must run on every call
    def _eval_tau(self) -> Tensor:
        key = version_key(self.weight, self.log_q)
        if self._cache_key != key:
            with torch.no_grad(), _untraced():
                tau = _inverse_t(self.weight.detach(), self.log_q.detach())
                if not bool(torch.isfinite(tau).all()):
                    raise ValueError(f"{type(self).__name__}: non-finite weight or log_q")
                self._cache = tau
            self._cache_key = key
        return self._cache  # type: ignore[return-value]

    def _tau(self) -> Tensor:
        return _inverse_t(self.weight, self.log_q) if self.training else self._eval_tau()

    def to_torch(self) -> nn.Module:
        """Not available: a residual nonlinear map (module docstring, "Export")."""
        raise _no_plain_equivalent(self)

    def eval_scale(self) -> Tensor:
        """The diagonal T⁻¹ used in eval mode (inner,), detached."""
        return self._eval_tau().detach().clone()

    def _schur_norm_squared(self, tau64: Tensor) -> float:
        """Guaranteed ‖diag(√τ) Wᵀ‖² of the used τ, every input size (weighted Schur test with
        q' = q/√τ, for which the row sums are τ_i t_i ≈ 1)."""
        lq = self.log_q.detach().to(torch.float64) - 0.5 * torch.log(tau64)
        return gram_row_sum_bound(self.weight.transpose(0, 1), 1, log_q=lq, input_scale=tau64.sqrt()) ** 2


class SLLLinear(_SLLBase):
    r"""Dense SLL layer h(x) = x − 2 W T⁻¹ ReLU(Wᵀx + b) (Araujo et al., ICLR 2023).

    1-Lipschitz for every parameter value (module docstring). Training computes T from the
    inner × inner Gram at each forward (differentiable in W and q); eval caches T⁻¹ per
    version of (W, q), so a forward costs two matrix products. ``lipschitz_bound`` is
    max(1, 2‖W T_used^(-1/2)‖² − 1) with the exact float64 norm (1 + O(1e-7) in float32).

    Args:
        features: size of the input and the output.
        inner_features: columns of W (default ``features``).
        bias: learn b (default True).
        device, dtype: as for ``nn.Linear``.

    Shape:
        - Input: (*, features)
        - Output: (*, features)
    """

    def __init__(self, features: int, inner_features: Optional[int] = None, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.features = _positive_int("SLLLinear", "features", features)
        self.inner_features = features if inner_features is None else _positive_int(
            "SLLLinear", "inner_features", inner_features)
        self._init_params(self.inner_features, (self.inner_features, features), bias, features, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_input("SLLLinear", x, False, self.features)
        z = _scaled_relu(F.linear(x, self.weight, self.bias), 2 * self._tau())
        return x - F.linear(z, self.weight.t())

    def lipschitz_bound(self, input_shape=None) -> float:
        """max(1, 2‖diag(√τ)Wᵀ‖² − 1), exact float64 SVD norm (+1e-9) of the eval-mode map."""
        tau64 = self._eval_tau().detach().to(torch.float64)
        s = float(spectral_norm_exact(self.weight.detach().to(torch.float64) * tau64.sqrt()[:, None]))
        return max(1.0, 2.0 * s * s - 1.0) * _MARGIN

    def extra_repr(self) -> str:
        return f"features={self.features}, inner_features={self.inner_features}, bias={self.bias is not None}"


class SLLConv2d(_SLLBase):
    r"""Convolutional SLL layer h(x) = x − 2 K̃ T⁻¹ ReLU(K x + b) (Araujo et al., ICLR 2023).

    K: 'same' convolution ``channels`` → ``inner_channels`` (odd ``kernel_size``, stride 1,
    zero or circular padding), K̃ its exact adjoint (``conv_transpose2d`` / flipped circular
    kernel); t from the self-correlation of the kernel over the inner channels, summed over
    all shifts, so the layer is 1-Lipschitz for every parameter value and every input size.
    Training recomputes T (one inner·k² × inner·k² Gram product); eval caches T⁻¹ per version
    of (K, q): a forward then costs two convolutions.

    Args:
        channels: input and output channels.
        inner_channels: output channels of K (default ``channels``).
        kernel_size: odd int (default 3).
        bias: learn b (default True).
        padding_mode: ``'zeros'`` (default) or ``'circular'``.
        device, dtype: as for ``nn.Conv2d``.

    Shape:
        - Input: (B, channels, H, W)
        - Output: (B, channels, H, W)
    """

    def __init__(self, channels: int, inner_channels: Optional[int] = None, kernel_size: int = 3,
                 bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        self.channels, self.inner_channels, k = _residual_conv_args("SLLConv2d", channels, inner_channels,
                                                                    kernel_size, padding_mode)
        self.kernel_size = (k, k)
        self.padding_mode = padding_mode
        self._init_params(self.inner_channels, (self.inner_channels, self.channels, k, k), bias,
                          self.channels * k * k, device, dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_input("SLLConv2d", x, True, self.channels)
        z = _scaled_relu(_conv(x, self.weight, self.bias, self.padding_mode), (2 * self._tau())[:, None, None])
        return x - _conv_adjoint(z, self.weight, self.padding_mode)

    def lipschitz_bound(self, input_shape: Optional[Sequence[int]] = None) -> float:
        r"""max(1, 2s² − 1), s ≥ ‖diag(√τ) K‖ guaranteed for the eval-mode τ.

        s is the float64 weighted Gram row-sum bound (every input size; 1 + O(1e-7) in
        float32), and with ``input_shape`` also the FFT bound
        :func:`~liplayers.functional.conv.conv2d_lipschitz_bound` of the scaled kernel at that
        size (the smaller is used).
        """
        _check_mode("SLLConv2d", self.padding_mode)
        tau64 = self._eval_tau().detach().to(torch.float64)
        s2 = self._schur_norm_squared(tau64)
        if input_shape is not None:
            k = self.weight.detach().to(torch.float64) * tau64.sqrt()[:, None, None, None]
            p = (k.shape[-1] - 1) // 2
            s2 = min(s2, conv2d_lipschitz_bound(k, input_shape, 1, p, 1, self.padding_mode) ** 2)
        return max(1.0, 2.0 * s2 - 1.0) * _MARGIN

    def extra_repr(self) -> str:
        return (f"channels={self.channels}, inner_channels={self.inner_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}")
