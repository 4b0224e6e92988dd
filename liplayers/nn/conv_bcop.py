"""Exactly orthogonal convolution by block convolutional orthogonal parametrization (BCOP)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.bcop import bcop_kernel, bcop_structural_bound as _bcop_structural_bound, strided_kernel
from ..functional.conv import (_pair, _spatial, circular_conv2d, circular_conv_norm, conv2d_lipschitz_bound,
                               polyphase_kernel, resolve_padding)
from ..functional.orthogonalization import retract_semi_orthogonal_
from ..functional.stiefel import with_tangent_gradient
from ..lipschitz import LipschitzModule
from ..parametrizations._common import orthogonal_init_, version_key as _version_key
from ..utils import check_bool
from ._conv_common import Size2, _check_padding_mode

__all__ = ["OrthoConv2d"]

_ROUND = 1.0 + 1e-9


class OrthoConv2d(nn.Conv2d, LipschitzModule):
    r"""Exactly orthogonal 2-D convolution (BCOP, Li et al. 2019), drop-in for ``nn.Conv2d``.

    A subclass of ``nn.Conv2d`` with the same arguments and defaults (``padding=0``); its
    ``weight`` is a read-only property, the kernel actually used, built from the BCOP
    parameters ``ortho`` and ``projectors`` (the state dict holds those and ``bias``).

    Maths. With stride s the layer is a pixel unshuffle by s (a permutation: in → in·s²
    channels, H → H/s) followed by the stride-1 BCOP convolution with the coarse kernel K_c
    (:func:`~liplayers.functional.bcop.bcop_kernel`) of size k_c = ⌈k/s⌉; it runs as *one*
    stride-s convolution with the rearranged kernel K of size s·k_c
    (:func:`~liplayers.functional.bcop.strided_kernel`), so ``kernel_size`` is (s·k_c, s·k_c):
    ``kernel_size`` given to the constructor is the receptive field, rounded up to a multiple
    of the stride (3 with stride 2 gives 4). Let c_in = in·s².

    Guarantees (to float rounding, ~1e-6 in float32, ~1e-12 in float64):

    * ``padding_mode="circular"`` (the 'same' amount of padding, H and W divisible by s): the operator
      is orthogonal — all singular values 1; an isometry (norm- and gradient-norm preserving)
      when out ≥ c_in, a co-isometry (orthonormal rows) when out < c_in;
    * ``padding_mode="zeros"``, any padding and input size: a restriction of the former
      (zero padding embeds the input isometrically), norm ≤ 1.

    :meth:`lipschitz_bound` is computed from the eval-mode kernel actually used (its FFT norm
    with ``input_shape``, else a size-independent structural bound), never assumed to be 1.

    Parametrization: H (out × c_in, semi-orthonormal) and 2(k_c − 1) bases Q_t
    (c × ⌊c/2⌋, c = max(out, c_in)); all are kept *on* the Stiefel manifold by retraction:
    at the first training-mode forward after they change (an optimizer step), they are
    replaced in place by their polar factors (a few float64 Björck steps on small matrices),
    so the forward is a plain convolution with a kernel built by 2(k_c − 1) thin products.
    In eval mode the kernel is built once per parameter version and cached.

    Gradient (``riemannian_grad=True``, default): the optimizer receives the Riemannian
    gradient of H and of each Q_t — the Euclidean gradient G projected onto the tangent space
    of the Stiefel manifold, G − X·sym(XᵀG) (:func:`~liplayers.functional.stiefel_tangent_projection`).
    The removed part only changes the singular values of the factors, which the retraction
    undoes; left in, Adam accumulates it in its moments (about 70% of the gradient's norm at
    initialization) and most of each step is thrown away (measured: 16–23% of the change of
    the projectors Q_tQ_tᵀ survives the retraction after 50 Adam steps, 97% with the
    projection; on MNIST at a fixed 45-CPU-second budget, certified accuracy at ε = 1.58 of a
    small BCOP network 29.2 → 33.1%). ``riemannian_grad=False`` hands over the Euclidean
    gradient (the behaviour of liplayers ≤ 0.2.0). The forward pass is identical either way.

    Under ``torch.compile`` the layer runs eagerly (one graph break): the retraction and the
    eval cache depend on parameter versions, on which compiled graphs do not guard.

    Shape:
        input (B, in, H, W) → output (B, out, H', W') as ``nn.Conv2d`` with the kernel used:
        H' = ⌊(H + p_top + p_bottom − d(s·k_c − 1) − 1)/s⌋ + 1; with ``'same'`` padding H' = ⌊H/s⌋.

    Args:
        in_channels, out_channels, stride, bias, device, dtype: as ``nn.Conv2d`` (square
            stride only).
        kernel_size: receptive field (rounded up to a multiple of the stride).
        padding: as ``nn.Conv2d`` on the input grid (default 0), or ``'same'`` (coarse-grid
            'same', asymmetric for even k_c as torch: top ⌊(k_c − 1)/2⌋·s, bottom the rest;
            allowed with stride > 1) or ``'valid'``.
        dilation: dilation of the kernel (stride 1 only); dilated orthogonal kernels stay
            orthogonal.
        groups: must be 1.
        padding_mode: ``'zeros'`` (default, as ``nn.Conv2d``) or ``'circular'`` (exactly
            orthogonal; needs the 'same' amount of padding: total d(k_c − 1) for stride 1,
            s(k_c − 1) for stride s).
        riemannian_grad: keyword-only; project the factors' gradients onto the tangent space
            (default True; see *Gradient*).

    Raises:
        ValueError: for padding modes that duplicate pixels (reflect, replicate), circular
            padding of another amount, groups ≠ 1, non-square strides, dilation with stride.
    """

    riemannian_grad: bool = True  # class default: also for objects pickled by earlier versions

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size2,
        stride: Size2 = 1,
        padding: Union[str, Size2] = 0,
        dilation: Size2 = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        riemannian_grad: bool = True,
    ) -> None:
        nn.Module.__init__(self)  # not nn.Conv2d.__init__: there is no free kernel parameter
        self.riemannian_grad = check_bool(riemannian_grad, "OrthoConv2d: riemannian_grad")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"OrthoConv2d: {name} must be a positive integer, got {v!r}")
        if groups != 1:
            raise ValueError("OrthoConv2d: groups must be 1 (grouped orthogonal convolutions are not implemented)")
        _check_padding_mode(padding_mode, ("zeros", "circular"), "OrthoConv2d")
        ks, st, dil = _pair(kernel_size, "kernel_size"), _pair(stride, "stride"), _pair(dilation, "dilation")
        if min(ks) < 1 or min(st) < 1 or min(dil) < 1:
            raise ValueError(f"kernel_size, stride, dilation must be >= 1, got {ks}, {st}, {dil}")
        if st[0] != st[1]:
            raise ValueError(f"OrthoConv2d: only square strides are supported (pixel unshuffle), got {st}")
        s = st[0]
        if s > 1 and dil != (1, 1):
            raise ValueError("OrthoConv2d: dilation > 1 with stride > 1 is not supported")
        kc = (-(-ks[0] // s), -(-ks[1] // s))
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            coarse = resolve_padding(padding, kc, dil)
            pads = tuple((a * s, b * s) for a, b in coarse)
        else:
            padding = _pair(padding, "padding")
            if min(padding) < 0:
                raise ValueError(f"padding must be >= 0, got {padding}")
            pads = tuple((p, p) for p in padding)
        if padding_mode == "circular":
            need = tuple(dil[i] * (kc[i] - 1) * s for i in range(2))
            if any(pads[i][0] + pads[i][1] != need[i] for i in range(2)):
                raise ValueError(
                    f"OrthoConv2d: circular padding must be 'same' (a total of {need} per axis; any other amount "
                    "drops or duplicates pixels, so the layer could not be orthogonal); pass padding='same'")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = (s * kc[0], s * kc[1])
        self.stride = st
        self.padding = padding
        self.dilation = dil
        self.transposed = False
        self.output_padding = (0, 0)
        self.groups = 1
        self.padding_mode = padding_mode
        self.coarse_kernel_size = kc
        self._pads: Tuple[Tuple[int, int], Tuple[int, int]] = pads  # type: ignore[assignment]
        self._reversed_padding_repeated_twice = [pads[1][0], pads[1][1], pads[0][0], pads[0][1]]
        cin = in_channels * s * s
        c = max(cin, out_channels)
        n_taps = (kc[0] - 1) + (kc[1] - 1)
        fk = {"device": device, "dtype": dtype}
        self.ortho = nn.Parameter(torch.empty(out_channels, cin, **fk))
        self.projectors = nn.Parameter(torch.empty(n_taps, c, max(1, c // 2), **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self._cache_key: Optional[tuple] = None
        self._retracted_key: Optional[tuple] = None
        self._cache: Optional[Tuple[Tensor, Tensor, Tensor]] = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random orthogonal H and projector bases (Haar-distributed); zero bias."""
        with torch.no_grad():
            orthogonal_init_(self.ortho)  # QR in float32 at least (no bf16/fp16 QR kernel)
            for t in range(self.projectors.shape[0]):
                orthogonal_init_(self.projectors[t])
            if self.bias is not None:
                self.bias.zero_()
        self._cache_key = None
        self._retracted_key = None

    # -- kernel ---------------------------------------------------------------------------
    def _kernel(self, ortho: Tensor, projectors: Tensor) -> Tensor:
        """The stride-s kernel (out, in, s·k_c, s·k_c) built from the factors (traceable)."""
        return strided_kernel(bcop_kernel(ortho, projectors, self.coarse_kernel_size), self.stride[0])

    # The two helpers below read the parameters' version counters, which a compiled graph does
    # not guard on: they always run eagerly (also when ``weight`` is read from compiled code).
    @torch.compiler.disable
    def _retract_if_changed(self) -> None:
        """Retract ``ortho`` and ``projectors`` in place (no grad) if they changed since the last call."""
        if self._retracted_key != _version_key(self.ortho, self.projectors):
            retract_semi_orthogonal_(self.ortho)
            if self.projectors.numel():
                retract_semi_orthogonal_(self.projectors)
            self._retracted_key = _version_key(self.ortho, self.projectors)

    @torch.compiler.disable
    def _eval_kernel(self) -> Tensor:
        """The eval-mode kernel, cached per parameter version (orthonormalized copies if needed)."""
        key = _version_key(self.ortho, self.projectors)
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                h = self.ortho.detach().clone()
                q = self.projectors.detach().clone()
                if self._retracted_key != key:  # changed since the last retraction: orthonormalize copies
                    retract_semi_orthogonal_(h)
                    if q.numel():
                        retract_semi_orthogonal_(q)
                self._cache = (h, q, self._kernel(h, q).contiguous())
            self._cache_key = key
        return self._cache[2]  # type: ignore[index]

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The kernel used now (s·k_c × s·k_c taps): differentiable in training, cached in eval."""
        return self._training_kernel() if self.training else self._eval_kernel()

    def _training_kernel(self) -> Tensor:
        """Retract the factors if they changed, then build the kernel from them (differentiable;
        with ``riemannian_grad`` their gradients are projected onto the tangent space)."""
        self._retract_if_changed()
        if self.riemannian_grad:
            return self._kernel(with_tangent_gradient(self.ortho), with_tangent_gradient(self.projectors))
        return self._kernel(self.ortho, self.projectors)

    @weight.setter
    def weight(self, value) -> None:
        raise AttributeError(f"{type(self).__name__}.weight is read-only: it is built from the parameters ortho and "
                             "projectors")

    def eval_weight(self) -> Tensor:
        """The kernel used in eval mode (detached), without changing the mode."""
        return self._eval_kernel().detach().clone()

    # -- forward ----------------------------------------------------------------------------
    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        (pt, pb), (pl, pr) = self._pads
        if self.padding_mode == "zeros":
            if pt == pb and pl == pr:
                return F.conv2d(input, weight, bias, self.stride, (pt, pl), self.dilation)
            return self._cropped_conv(input, weight, bias)
        if pt == pb and pl == pr and self.stride == (1, 1):  # circular 'same': direct adjoint in backward
            return circular_conv2d(input, weight, bias, self.dilation)
        return F.conv2d(F.pad(input, (pl, pr, pt, pb), mode="circular"), weight, bias, self.stride, 0, self.dilation)

    def _cropped_conv(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        """Asymmetric zero padding (lo, hi) (e.g. (0, 2) for a 4×4 stride-2 'same' kernel) without a padded
        copy of the input: the symmetric padding lo when no window reads the extra zeros, else
        P = lo + s·m ≥ hi with the output cropped by m windows."""
        sym, crops = [], []
        for n, k, (lo, hi), s, d in zip(input.shape[-2:], weight.shape[-2:], self._pads, self.stride, self.dilation):
            reach = d * (k - 1) + 1
            n_out = (n + lo + hi - reach) // s + 1
            unread = hi > lo and n + 2 * lo >= reach and (n + 2 * lo - reach) // s + 1 == n_out
            m = 0 if unread else max(0, -(-(hi - lo) // s))
            sym.append(lo + s * m)
            crops.append((m, m + n_out))
        y = F.conv2d(input, weight, bias, self.stride, tuple(sym), self.dilation)
        return y[..., crops[0][0]:crops[0][1], crops[1][0]:crops[1][1]]

    def _check_input(self, input: Tensor) -> None:
        if input.dim() != 4 or input.shape[1] != self.in_channels:
            raise ValueError(f"OrthoConv2d expects input (B, {self.in_channels}, H, W), got {tuple(input.shape)}")
        s = self.stride[0]
        if self.padding_mode == "circular" and (input.shape[-2] % s or input.shape[-1] % s):
            raise ValueError(f"OrthoConv2d with circular padding and stride {s}: H and W must be divisible by {s}, "
                             f"got {tuple(input.shape[-2:])}")

    # Under torch.compile the whole forward runs eagerly (one graph break per layer): the
    # parameters' version counters decide the retraction and the eval cache, and a compiled graph
    # does not guard on them. Tracing the convolution after that break would not help: the break
    # isolates it in a graph of its own (no neighbour to fuse with), where inductor only adds
    # layout copies, and that graph would be recompiled for every layer shape.
    @torch.compiler.disable
    def forward(self, input: Tensor) -> Tensor:
        self._check_input(input)
        return self._conv_forward(input, self.weight, self.bias)

    # -- protocol -----------------------------------------------------------------------------
    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval-mode operator: min(structural, FFT) bound of the kernel used.

        The structural bound (:func:`~liplayers.functional.bcop.bcop_structural_bound`, on the
        polyphase rearrangement of the kernel used) holds for every input size; with
        ``input_shape`` the FFT norm is also used: exact for circular padding (a stride-s
        circular convolution with s(k_c − 1) padding on a grid divisible by s reaches every
        window once, up to a cyclic shift), the circular embedding of the padded grid for zeros.
        """
        k = self._eval_kernel()
        h, q, _ = self._cache  # type: ignore[misc]
        s = self.stride[0]
        coarse = polyphase_kernel(k, s) if s > 1 else k
        bound = _bcop_structural_bound(h, q, self.coarse_kernel_size, coarse)
        hw = _spatial(input_shape)
        if hw is None:
            return bound
        if self.padding_mode == "circular":
            if hw[0] % s or hw[1] % s:
                raise ValueError(f"input size {hw} not divisible by the stride {s}")
            return min(bound, circular_conv_norm(k, hw, s, self.dilation))
        (pt, pb), (pl, pr) = self._pads  # zero padding embeds the input isometrically in the padded grid
        return min(bound, conv2d_lipschitz_bound(k, (hw[0] + pt + pb, hw[1] + pl + pr), self.stride, 0,
                                                 self.dilation, "zeros"))

    def linf_lipschitz_bound(self, input_shape=None) -> float:
        """∞→∞ bound: the largest Σ|K[o]| of the eval kernel (padding copies only add terms to it)."""
        k = self._eval_kernel().to(torch.float64)
        return float(k.abs().reshape(k.shape[0], -1).sum(1).max()) * _ROUND

    def to_torch(self) -> nn.Module:
        """Plain torch modules computing the eval-mode layer with the kernel it uses.

        ``nn.Conv2d`` (stride s, kernel s·k_c) when the padding is symmetric; with asymmetric
        zero padding ``nn.ZeroPad2d`` + ``nn.Conv2d``; for circular padding with stride > 1
        ``nn.PixelUnshuffle`` + the coarse circular ``nn.Conv2d`` (registered with an exact bound).
        """
        k = self.eval_weight()
        s = self.stride[0]
        (pt, pb), (pl, pr) = self._pads
        has_bias = self.bias is not None

        def conv(kernel: Tensor, stride: int, pad, mode: str) -> nn.Conv2d:
            m = nn.Conv2d(kernel.shape[1], kernel.shape[0], tuple(kernel.shape[-2:]), stride, pad, self.dilation,
                          bias=has_bias, padding_mode=mode, device=kernel.device, dtype=kernel.dtype)
            with torch.no_grad():
                m.weight.copy_(kernel)
                if has_bias:
                    m.bias.copy_(self.bias)
            return m

        if s > 1 and self.padding_mode == "circular" and all(p % s == 0 for p in (pt, pb, pl, pr)):
            coarse_pad = (pt // s, pl // s) if (pt == pb and pl == pr) else "same"
            return nn.Sequential(nn.PixelUnshuffle(s), conv(polyphase_kernel(k, s), 1, coarse_pad, "circular"))
        if pt == pb and pl == pr:
            return conv(k, s, (pt, pl), self.padding_mode)
        if s == 1:  # asymmetric only for 'same' with an even kernel: torch's own convention
            return conv(k, 1, "same", self.padding_mode)
        return nn.Sequential(nn.ZeroPad2d((pl, pr, pt, pb)), conv(k, s, 0, "zeros"))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        if prefix + "weight" in state_dict and prefix + "ortho" not in state_dict:
            error_msgs.append(
                f"OrthoConv2d ({prefix or 'root'}): the state dict holds a plain kernel '{prefix}weight'; an "
                "OrthoConv2d stores its orthogonal kernel as BCOP factors 'ortho' and 'projectors' and cannot "
                "load an arbitrary kernel (use SpectralConv2d or RKOConv2d for that)")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding!r}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        s += f", coarse_kernel_size={self.coarse_kernel_size}, bias={self.bias is not None}"
        return s if self.riemannian_grad else s + ", riemannian_grad=False"
