"""Exactly orthogonal convolution by block convolutional orthogonal parametrization (BCOP)."""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.bcop import bcop_kernel, bcop_structural_bound as _bcop_structural_bound
from ..functional.conv import _pair, _spatial, circular_conv2d, conv2d_lipschitz_bound, resolve_padding
from ..functional.orthogonalization import retract_semi_orthogonal_
from ..lipschitz import LipschitzModule
from ..parametrizations._common import orthogonal_init_, version_key as _version_key
from ._conv_common import Size2, _check_padding_mode, _pads_arg

__all__ = ["OrthoConv2d"]


class OrthoConv2d(LipschitzModule):
    r"""Exactly orthogonal 2-D convolution (BCOP), drop-in for ``nn.Conv2d``.

    Shapes: (B, in, H, W) → (B, out, H', W'), H' = H/s with 'same' padding (H divisible by the
    stride s). The layer is x ↦ conv(unshuffle_s(x), K) + b with ``unshuffle_s`` the pixel
    unshuffle (a permutation: in → in·s² channels, H → H/s) and K the BCOP kernel
    (:func:`bcop_kernel`) of size k_c = ⌈k/s⌉ on the coarse grid, so that its receptive field
    contains that of a k×k stride-s convolution (``kernel_size`` is the receptive field on the
    input grid; pass ``stride=1`` and your own :class:`~liplayers.nn.pooling.InvertibleDownsampling`
    for other layouts). Let c_in = in·s².

    Guarantees (to float rounding, ~1e-6 in float32, ~1e-12 in float64):

    * ``padding_mode="circular"``: the operator is orthogonal — all singular values 1; an
      isometry (norm- and gradient-norm preserving) when out ≥ c_in, a co-isometry
      (orthonormal rows, KKᵀ = I) when out < c_in;
    * ``padding_mode="zeros"``: a restriction of the former, norm ≤ 1 (orthogonal away from
      the border).

    Parametrization: H (out × c_in, semi-orthonormal) and 2(k_c − 1) bases Q_t
    (c × ⌊c/2⌋, c = max(out, c_in)); all are kept *on* the Stiefel manifold by retraction:
    at the first training-mode forward after they change (an optimizer step), they are
    replaced in place by their polar factors (a few float64 Björck steps on small matrices),
    so the forward is a plain convolution with a kernel built by 2(k_c − 1) small products.
    In eval mode the kernel is built once per parameter version and cached.

    Args:
        in_channels, out_channels, kernel_size, stride, bias, device, dtype: as ``nn.Conv2d``
            (square stride only).
        padding: ``'same'`` (default; asymmetric for even k_c, as torch), ``'valid'``, or for
            stride 1 an int / pair (zeros padding only).
        dilation: dilation of the coarse kernel (stride 1 only); dilated orthogonal kernels
            stay orthogonal.
        groups: must be 1.
        padding_mode: ``'zeros'`` (default, as ``nn.Conv2d``) or ``'circular'`` (exactly
            orthogonal; requires 'same' padding).

    Raises:
        ValueError: for padding modes that duplicate pixels (reflect, replicate), circular
            padding other than 'same', groups ≠ 1, or non-square strides.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size2,
        stride: Size2 = 1,
        padding: Union[str, Size2] = "same",
        dilation: Size2 = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"channels must be positive, got in={in_channels}, out={out_channels}")
        if groups != 1:
            raise ValueError("OrthoConv2d: groups must be 1 (grouped orthogonal convolutions are not implemented)")
        _check_padding_mode(padding_mode, ("zeros", "circular"), "OrthoConv2d")
        ks = _pair(kernel_size, "kernel_size")
        st = _pair(stride, "stride")
        dil = _pair(dilation, "dilation")
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
            pads = resolve_padding(padding, kc, dil)
        else:
            p = _pair(padding, "padding")
            if s > 1:
                if p != tuple((k - 1) // 2 for k in ks):
                    raise ValueError(
                        f"OrthoConv2d with stride {s}: padding must be 'same' or 'valid' (got {padding!r}); "
                        "the stride is implemented by pixel unshuffle followed by a stride-1 convolution")
                pads = resolve_padding("same", kc, dil)
            else:
                pads = resolve_padding(p, kc, dil)
        if padding_mode == "circular":
            if any(pads[i][0] + pads[i][1] != dil[i] * (kc[i] - 1) for i in range(2)):
                raise ValueError(
                    "OrthoConv2d: circular padding must be 'same' (any other amount drops or duplicates "
                    "pixels, so the layer could not be orthogonal)")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = ks
        self.stride = st
        self.padding = padding
        self.dilation = dil
        self.groups = 1
        self.padding_mode = padding_mode
        self.coarse_kernel_size = kc
        self._pads = pads
        cin = in_channels * s * s
        c = max(cin, out_channels)
        rank = max(1, c // 2)
        n_taps = (kc[0] - 1) + (kc[1] - 1)
        fk = {"device": device, "dtype": dtype}
        self.ortho = nn.Parameter(torch.empty(out_channels, cin, **fk))
        self.projectors = nn.Parameter(torch.empty(n_taps, c, rank, **fk))
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
    def _factors(self) -> Tuple[Tensor, Tensor]:
        """(H, Q) to build the kernel from: retracted in place in training, copies in eval."""
        if self.training:
            if self._retracted_key != _version_key(self.ortho, self.projectors):
                retract_semi_orthogonal_(self.ortho)
                if self.projectors.numel():
                    retract_semi_orthogonal_(self.projectors)
                self._retracted_key = _version_key(self.ortho, self.projectors)
            return self.ortho, self.projectors
        self._eval_cache()
        return self._cache[0], self._cache[1]  # type: ignore[index]

    def _eval_cache(self) -> None:
        key = _version_key(self.ortho, self.projectors)
        if self._cache is not None and self._cache_key == key:
            return
        with torch.no_grad():
            h = self.ortho.detach().clone()
            q = self.projectors.detach().clone()
            if self._retracted_key != key:  # changed since the last retraction: orthonormalize a copy
                retract_semi_orthogonal_(h)
                if q.numel():
                    retract_semi_orthogonal_(q)
            k = bcop_kernel(h, q, self.coarse_kernel_size)
        self._cache = (h, q, k)
        self._cache_key = key

    @property
    def weight(self) -> Tensor:
        """The kernel used now (out, in·s², k_c, k_c): differentiable in training, cached in eval."""
        if self.training:
            h, q = self._factors()
            return bcop_kernel(h, q, self.coarse_kernel_size)
        self._eval_cache()
        return self._cache[2]  # type: ignore[index]

    def eval_weight(self) -> Tensor:
        """The kernel used in eval mode (detached), without changing the mode."""
        self._eval_cache()
        return self._cache[2].detach().clone()  # type: ignore[index]

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"OrthoConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        s = self.stride[0]
        if s > 1:
            if x.shape[-2] % s or x.shape[-1] % s:
                raise ValueError(f"OrthoConv2d with stride {s}: H and W must be divisible by {s}, got {tuple(x.shape[-2:])}")
            x = F.pixel_unshuffle(x, s)
        k = self.weight
        (pt, pb), (pl, pr) = self._pads
        if self.padding_mode == "zeros" and pt == pb and pl == pr:
            return F.conv2d(x, k, self.bias, 1, (pt, pl), self.dilation)
        if self.padding_mode == "circular" and pt == pb and pl == pr:
            return circular_conv2d(x, k, self.bias, self.dilation)
        mode = "constant" if self.padding_mode == "zeros" else "circular"
        return F.conv2d(F.pad(x, (pl, pr, pt, pb), mode=mode), k, self.bias, 1, 0, self.dilation)

    # -- protocol -----------------------------------------------------------------------------
    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval-mode operator: min(structural, FFT) bound.

        The structural bound (:func:`_bcop_structural_bound`) holds for every input size; with
        ``input_shape`` the FFT bound on the coarse grid (exact for circular) is also used.
        """
        self._eval_cache()
        h, q, k = self._cache  # type: ignore[misc]
        bound = _bcop_structural_bound(h, q, self.coarse_kernel_size, k)
        hw = _spatial(input_shape)
        if hw is not None:
            s = self.stride[0]
            if hw[0] % s or hw[1] % s:
                raise ValueError(f"input size {hw} not divisible by the stride {s}")
            fft = conv2d_lipschitz_bound(k, (hw[0] // s, hw[1] // s), 1, _pads_arg(self._pads),
                                         self.dilation, self.padding_mode)
            bound = min(bound, fft)
        return bound

    def to_torch(self) -> nn.Module:
        """``nn.Conv2d`` (preceded by ``nn.PixelUnshuffle`` for stride > 1) with the eval kernel."""
        k = self.eval_weight()
        s = self.stride[0]
        (pt, pb), (pl, pr) = self._pads
        if pt == pb and pl == pr:
            pad: Union[str, Tuple[int, int]] = (pt, pl)
        else:
            pad = "same"  # asymmetric only for 'same' with an even coarse kernel (torch's convention)
        conv = nn.Conv2d(k.shape[1], k.shape[0], self.coarse_kernel_size, 1, pad, self.dilation,
                         bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=k.device, dtype=k.dtype)
        with torch.no_grad():
            conv.weight.copy_(k)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv if s == 1 else nn.Sequential(nn.PixelUnshuffle(s), conv)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding!r}, padding_mode={self.padding_mode!r}, coarse_kernel={self.coarse_kernel_size}, "
                f"bias={self.bias is not None}")

