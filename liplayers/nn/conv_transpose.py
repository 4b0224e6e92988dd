r"""Transposed convolutions with a guaranteed operator norm: orthogonal (BCOP) and spectrally normalized.

**Adjoint.** ``conv_transpose2d`` with kernel K is the adjoint of ``conv2d`` with the same kernel
on its output grid, restricted to its first H×W outputs: same operator norm, bounded by the
bounds of that convolution (:mod:`liplayers.functional.conv_transpose`).

**Circular.** The adjoint of the circular stride-s convolution with 'same' padding on an
N = M·s torus maps M×M images to N×N ones. It is computed as a circular padding of the input
by (q_l, q_r) pixels, a ``conv_transpose2d`` whose padding P = q_l·s + p crops the result to
the N outputs, each receiving every (pixel, tap) pair that wraps onto it exactly once
(the amounts are derived in ``_circular_plan``); ``to_torch`` reproduces it with ``nn.CircularPad2d``.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..functional.bcop import bcop_structural_bound
from ..functional.conv import _spatial, circular_conv_norm, polyphase_kernel
from ..functional.conv_transpose import (conv_transpose2d_lipschitz_bound, conv_transpose_linf_bound,
                                         largest_output_padding, transposed_output_size)
from ..functional.padding import _pair
from ..lipschitz import LipschitzModule, UnboundedModuleError
from ..parametrizations._common import eval_mode_weight, weight_parametrization
from ..parametrizations.operator_norm import OperatorNormalized
from ..utils import check_bool
from ._conv_common import Size2, _check_padding_mode, _positive_int
from .conv_bcop import OrthoConv2d
from .linear import _load_plain_weight

__all__ = ["OrthoConvTranspose2d", "SpectralConvTranspose2d"]


def _circular_plan(k: int, s: int, p: int, d: int) -> Tuple[int, int, int, int]:
    """(q_l, q_r, P, o): circular input padding, then ``conv_transpose2d`` with padding P, output padding o.

    The full transposed output at position m = q_l·s + p + n (0 ≤ n < N) collects the pairs
    (padded pixel i', tap a) with i'·s + a·d = m: for each tap, M consecutive i' (N = M·s
    consecutive m), i.e. every pixel of the torus once, as long as they lie in the padded input:
    q_l·s ≥ d(k − 1) − p and q_r·s ≥ p. The output has N pixels when
    o = (q_l − q_r + 1)s + 2p − d(k − 1) − 1, which fixes q_r given q_l (0 ≤ o < s).
    """
    span = d * (k - 1)
    ql = max(0, -(-(span - p) // s))
    while True:
        qr = ql + 1 + (2 * p - span - 1) // s
        if qr >= 0 and qr * s >= p:
            break
        ql += 1
    o = (ql - qr + 1) * s + 2 * p - span - 1
    return ql, qr, ql * s + p, o


def _wrap_pad(x: Tensor, pads: Iterable[Tuple[int, int]]) -> Tensor:
    """Circular padding by (before, after) per spatial axis, any amount (wraps as often as needed)."""
    for axis, (a, b) in zip((-2, -1), pads):
        n = x.shape[axis]
        idx = torch.remainder(torch.arange(-a, n + b, device=x.device), n)
        x = x.index_select(axis, idx)
    return x


class OrthoConvTranspose2d(nn.ConvTranspose2d, LipschitzModule):
    r"""Orthogonal transposed convolution: the adjoint of a BCOP orthogonal convolution.

    The kernel K (in, out, s·k_c, s·k_c) is the one of :class:`~liplayers.nn.OrthoConv2d`
    (out → in channels, stride s) built from the BCOP factors ``ortho`` (in × out·s²) and
    ``projectors``, kept on the Stiefel manifold by retraction; the layer is
    ``conv_transpose2d`` with K, the adjoint of that convolution (module docstring), so it has
    the same singular values: an isometry when out·s² ≥ in (e.g. in = 4·out with stride 2, the
    orthogonal 2× upsampling), a co-isometry otherwise.

    Guarantees (to float rounding): ``padding_mode="circular"`` (padding (s·d·(k_c − 1))/2,
    output padding 0; the output is s× the input, on the torus): orthogonal;
    ``"zeros"`` (torch's only mode; any padding and output padding): the adjoint of a
    restriction of an orthogonal map, norm ≤ 1. :meth:`lipschitz_bound` is computed from the
    eval kernel: min(BCOP structural bound, the bound of the adjoint convolution at the size —
    exact FFT norm for circular padding). In eval mode the kernel is cached per parameter
    version: a forward is one plain ``conv_transpose2d``. ``torch.compile`` runs it eagerly.

    Drop-in for ``nn.ConvTranspose2d`` (subclass, same arguments and defaults, ``forward(input,
    output_size=None)``; ``weight`` is a read-only property, the kernel used).

    Args:
        in_channels, out_channels, stride, output_padding, bias, device, dtype: as
            ``nn.ConvTranspose2d`` (square stride).
        kernel_size: receptive field, rounded up to a multiple of the stride.
        padding: int or pair (cropping of the output, as ``nn.ConvTranspose2d``).
        dilation: stride 1 only. groups: must be 1.
        padding_mode: ``'zeros'`` (default) or ``'circular'``.
        riemannian_grad: keyword-only; the factors' gradients projected onto the tangent space
            of the Stiefel manifold (default True), as in :class:`OrthoConv2d`.

    Shape:
        - Input: (B, in_channels, H, W) or (in_channels, H, W)
        - Output: (B, out_channels, H', W'), H' = (H − 1)s − 2p + d(kh − 1) + output_padding + 1
          (circular: H' = s·H)

    Li et al., "Preventing Gradient Attenuation in Lipschitz Constrained Convolutional
    Networks", NeurIPS 2019 (BCOP).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Size2 = 0, output_padding: Size2 = 0, groups: int = 1, bias: bool = True,
                 dilation: Size2 = 1, padding_mode: str = "zeros", device=None, dtype=None, *,
                 riemannian_grad: bool = True) -> None:
        nn.Module.__init__(self)  # not nn.ConvTranspose2d.__init__: there is no free kernel parameter
        layer = "OrthoConvTranspose2d"
        self.riemannian_grad = check_bool(riemannian_grad, f"{layer}: riemannian_grad")
        _positive_int(layer, "in_channels", in_channels)
        _positive_int(layer, "out_channels", out_channels)
        if groups != 1:
            raise ValueError(f"{layer}: groups must be 1 (grouped orthogonal convolutions are not implemented)")
        _check_padding_mode(padding_mode, ("zeros", "circular"), layer)
        if isinstance(padding, str):
            raise ValueError(f"{layer}: padding must be an int or a pair (as nn.ConvTranspose2d), got {padding!r}")
        ks, st, dil = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(dilation, "dilation")
        pad, opad = _pair(padding, "padding"), _pair(output_padding, "output_padding")
        if min(ks) < 1 or min(st) < 1 or min(dil) < 1 or min(pad) < 0 or min(opad) < 0:
            raise ValueError(f"{layer}: kernel_size, stride, dilation must be >= 1 and padding, output_padding >= 0, "
                             f"got {ks}, {st}, {dil}, {pad}, {opad}")
        if st[0] != st[1]:
            raise ValueError(f"{layer}: only square strides are supported, got {st}")
        s = st[0]
        if s > 1 and dil != (1, 1):
            raise ValueError(f"{layer}: dilation > 1 with stride > 1 is not supported")
        if any(opad[i] >= max(st[i], dil[i]) for i in range(2)):
            raise ValueError(f"{layer}: output_padding must be smaller than stride or dilation, got {opad}")
        kc = (-(-ks[0] // s), -(-ks[1] // s))
        if padding_mode == "circular":
            need = tuple(dil[i] * s * (kc[i] - 1) for i in range(2))
            if any(need[i] % 2 or 2 * pad[i] != need[i] for i in range(2)) or opad != (0, 0):
                raise ValueError(f"{layer}: circular padding needs padding = s·d·(k_c − 1)/2 per axis (an integer: "
                                 f"here {tuple(n / 2 for n in need)}) and output_padding 0; got padding {pad}, "
                                 f"output_padding {opad}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = (s * kc[0], s * kc[1])
        self.stride, self.padding, self.dilation = st, pad, dil
        self.transposed, self.output_padding, self.groups = True, opad, 1
        self.padding_mode = padding_mode
        self.coarse_kernel_size = kc
        self._reversed_padding_repeated_twice = [pad[1], pad[1], pad[0], pad[0]]
        c_conv = out_channels * s * s  # input channels of the adjoint convolution after unshuffle
        c = max(c_conv, in_channels)
        fk = {"device": device, "dtype": dtype}
        self.ortho = nn.Parameter(torch.empty(in_channels, c_conv, **fk))
        self.projectors = nn.Parameter(torch.empty((kc[0] - 1) + (kc[1] - 1), c, max(1, c // 2), **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self._cache_key: Optional[tuple] = None
        self._retracted_key: Optional[tuple] = None
        self._cache: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self.reset_parameters()

    # the BCOP kernel machinery of the adjoint convolution (same attributes, same maths)
    reset_parameters = OrthoConv2d.reset_parameters
    _kernel = OrthoConv2d._kernel
    _retract_if_changed = OrthoConv2d._retract_if_changed
    _training_kernel = OrthoConv2d._training_kernel
    riemannian_grad = True  # class default (objects pickled by earlier versions)
    _eval_kernel = OrthoConv2d._eval_kernel
    eval_weight = OrthoConv2d.eval_weight
    weight = OrthoConv2d.weight  # (in, out, s·k_c, s·k_c) here: the kernel of the adjoint convolution

    def _circular_plans(self) -> List[Tuple[int, int, int, int]]:
        return [_circular_plan(self.kernel_size[i], self.stride[i], self.padding[i], self.dilation[i])
                for i in range(2)]

    # eager under torch.compile: the retraction and the eval cache read parameter versions
    @torch.compiler.disable
    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        if input.dim() not in (3, 4) or input.shape[-3] != self.in_channels:
            raise ValueError(f"OrthoConvTranspose2d expects input (B, {self.in_channels}, H, W), got "
                             f"{tuple(input.shape)}")
        weight = self.weight
        if self.padding_mode == "circular":
            s = self.stride[0]
            n = (input.shape[-2] * s, input.shape[-1] * s)
            if output_size is not None and tuple(output_size)[-2:] != n:
                raise ValueError(f"OrthoConvTranspose2d with circular padding: the output size is {n}, got "
                                 f"output_size={tuple(output_size)}")
            (ql_h, qr_h, ph, oh), (ql_w, qr_w, pw, ow) = self._circular_plans()
            x = _wrap_pad(input, ((ql_h, qr_h), (ql_w, qr_w)))
            return F.conv_transpose2d(x, weight, self.bias, self.stride, (ph, pw), (oh, ow), 1, self.dilation)
        op = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation)
        return F.conv_transpose2d(input, weight, self.bias, self.stride, self.padding, op, 1, self.dilation)

    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval operator: min(BCOP structural bound, bound at ``input_shape``).

        The structural bound (:func:`~liplayers.functional.bcop.bcop_structural_bound` of the
        kernel used) bounds the adjoint convolution at every size, hence this layer; with
        ``input_shape`` (C, H, W): circular — the exact FFT norm of the circular convolution on
        the s·H × s·W torus (the adjoint); zeros —
        :func:`~liplayers.functional.conv_transpose.conv_transpose2d_lipschitz_bound`.
        """
        k = self._eval_kernel()
        h, q, _ = self._cache  # type: ignore[misc]
        s = self.stride[0]
        bound = bcop_structural_bound(h, q, self.coarse_kernel_size, polyphase_kernel(k, s) if s > 1 else k)
        hw = _spatial(input_shape)
        if hw is None:
            return bound
        if len(input_shape) == 3 and int(input_shape[0]) != self.in_channels:
            raise ValueError(f"input_shape {tuple(input_shape)} has {input_shape[0]} channels, expected "
                             f"{self.in_channels}")
        if self.padding_mode == "circular":
            return min(bound, circular_conv_norm(k, (hw[0] * s, hw[1] * s), s, self.dilation))
        return min(bound, conv_transpose2d_lipschitz_bound(k, hw, self.stride, self.padding, self.output_padding,
                                                           self.dilation, 1))

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        """∞→∞ bound of the eval kernel: the largest Σ|K| reaching one output (each term at most once).

        :func:`~liplayers.functional.conv_transpose.conv_transpose_linf_bound`; exact at
        ``input_shape`` for zero padding, size-free otherwise.
        """
        shape = input_shape if self.padding_mode == "zeros" else None
        return conv_transpose_linf_bound(self._eval_kernel(), self.stride, self.dilation, 1, shape, self.padding,
                                         self.output_padding)

    def to_torch(self) -> nn.Module:
        """``nn.ConvTranspose2d`` with the eval kernel (zeros); circular: ``nn.CircularPad2d`` + it.

        The circular export needs inputs at least as large as the wrap padding (torch's
        ``CircularPad2d`` wraps once).
        """
        k = self.eval_weight()
        has_bias = self.bias is not None
        if self.padding_mode == "circular":
            (ql_h, qr_h, ph, oh), (ql_w, qr_w, pw, ow) = self._circular_plans()
            pad, opad = (ph, pw), (oh, ow)
        else:
            pad, opad = self.padding, self.output_padding
        m = nn.ConvTranspose2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, pad, opad, 1,
                               has_bias, self.dilation, device=k.device, dtype=k.dtype)
        with torch.no_grad():
            m.weight.copy_(k)
            if has_bias:
                m.bias.copy_(self.bias)
        if self.padding_mode == "circular":
            return nn.Sequential(nn.CircularPad2d((ql_w, qr_w, ql_h, qr_h)), m)
        return m

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.output_padding != (0, 0):
            s += f", output_padding={self.output_padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s + f", coarse_kernel_size={self.coarse_kernel_size}, bias={self.bias is not None}"


class SpectralConvTranspose2d(nn.ConvTranspose2d, LipschitzModule):
    r"""``nn.ConvTranspose2d`` whose kernel is divided by a guaranteed bound of its operator norm.

    The transposed convolution with kernel K is the adjoint of the convolution with K on its
    output grid (module docstring), so K is normalized by the norm of that convolution
    (:class:`~liplayers.parametrizations.OperatorNormalized` with the adjoint's geometry): in
    training by power iteration (a lower bound, σ differentiable, Miyato et al. 2018); in eval
    by the exact FFT norm of the circular convolution on the zero-padded output grid, a
    guaranteed upper bound, computed once per parameter version. The size normalized for is the
    largest output a forward can produce from the configured input size (output padding
    max(``output_padding``, s − 1), see
    :func:`~liplayers.functional.conv_transpose.conv_transpose2d_lipschitz_bound`), so the eval
    operator has norm ≤ 1 at that input size whatever ``output_size`` is passed.
    :meth:`lipschitz_bound` recomputes a guaranteed bound of the eval kernel at any
    ``input_shape``, size-independent when None (slightly above 1).

    Drop-in for ``nn.ConvTranspose2d`` (subclass, same arguments and defaults; ``weight`` is the
    normalized kernel, the free one ``parametrizations.weight.original``; a plain
    ``nn.ConvTranspose2d`` state dict loads into it).

    Args:
        in_channels, ..., device, dtype: as ``nn.ConvTranspose2d`` (padding_mode ``'zeros'``).
        input_size: spatial size (H, W) of the *inputs* the kernel is normalized for, or None
            (taken from the first forward).
        n_power_iterations: power-iteration steps per training forward.

    Shape:
        - Input: (B, in_channels, H, W) or (in_channels, H, W)
        - Output: (B, out_channels, H', W'), H' = (H − 1)s − 2p + d(kh − 1) + output_padding + 1

    Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
    """

    parametrization = property(weight_parametrization)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Size2 = 0, output_padding: Size2 = 0, groups: int = 1, bias: bool = True,
                 dilation: Size2 = 1, padding_mode: str = "zeros", device=None, dtype=None, *,
                 input_size: Optional[Sequence[int]] = None, n_power_iterations: int = 1) -> None:
        _check_padding_mode(padding_mode, ("zeros",), "SpectralConvTranspose2d")
        if isinstance(padding, str):
            raise ValueError(f"SpectralConvTranspose2d: padding must be an int or a pair, got {padding!r}")
        if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < 1:
            raise ValueError(f"n_power_iterations must be a positive integer, got {n_power_iterations!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, output_padding, groups, bias,
                         dilation, padding_mode, device, dtype)
        if any(o < 0 or o >= max(s, d) for o, s, d in zip(self.output_padding, self.stride, self.dilation)):
            raise ValueError(f"SpectralConvTranspose2d: output_padding must be smaller than stride or dilation, got "
                             f"{self.output_padding}")
        out_hw = None
        if input_size is not None:
            out_hw = self._output_hw(_spatial(input_size), largest_output_padding(self.stride, self.output_padding))
        param = OperatorNormalized(self.kernel_size, self.stride, self.padding, self.dilation, "zeros", groups,
                                   out_hw, n_power_iterations)
        parametrize.register_parametrization(self, "weight", param)
        self.register_load_state_dict_pre_hook(_load_plain_weight)

    def _output_hw(self, hw: Sequence[int], op: Sequence[int]) -> Tuple[int, int]:
        out = tuple(transposed_output_size(int(hw[i]), self.kernel_size[i], self.stride[i], self.padding[i], int(op[i]),
                              self.dilation[i]) for i in range(2))
        if min(out) < 1:
            raise ValueError(f"SpectralConvTranspose2d: input size {tuple(hw)} gives an empty output")
        return out  # type: ignore[return-value]

    def eval_weight(self) -> Tensor:
        """The kernel used in eval mode (detached), without changing the mode."""
        return eval_mode_weight(self)

    # eager under torch.compile: the weight map reads parameter versions and runs power iterations
    @torch.compiler.disable
    def forward(self, input: Tensor, output_size: Optional[List[int]] = None) -> Tensor:
        op = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2, self.dilation)
        if self.parametrization.input_size is None and input.dim() in (3, 4):
            largest = largest_output_padding(self.stride, self.output_padding)
            self.parametrization.set_input_size(self._output_hw(input.shape[-2:], largest))
        return F.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, op, self.groups,
                                  self.dilation)

    def lipschitz_bound(self, input_shape=None) -> float:
        """Bound of the eval kernel with the layer's arguments now.

        :func:`~liplayers.functional.conv_transpose.conv_transpose2d_lipschitz_bound`.
        """
        if self.padding_mode != "zeros":
            raise UnboundedModuleError(f"SpectralConvTranspose2d.padding_mode = {self.padding_mode!r}")
        if input_shape is not None and len(input_shape) == 3 and int(input_shape[0]) != self.in_channels:
            raise ValueError(f"input_shape {tuple(input_shape)} has {input_shape[0]} channels, expected "
                             f"{self.in_channels}")
        return conv_transpose2d_lipschitz_bound(self.eval_weight(), input_shape, self.stride, self.padding,
                                                self.output_padding, self.dilation, self.groups)

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        """∞→∞ bound of the eval kernel (exact at ``input_shape``, size-free without it)."""
        return conv_transpose_linf_bound(self.eval_weight(), self.stride, self.dilation, self.groups, input_shape,
                                         self.padding, self.output_padding)

    def to_torch(self) -> nn.ConvTranspose2d:
        """``nn.ConvTranspose2d`` with the eval kernel and the bias: identical outputs."""
        k = self.eval_weight()
        m = nn.ConvTranspose2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                               self.output_padding, self.groups, self.bias is not None, self.dilation,
                               device=k.device, dtype=k.dtype)
        with torch.no_grad():
            m.weight.copy_(k)
            if self.bias is not None:
                m.bias.copy_(self.bias)
        return m
