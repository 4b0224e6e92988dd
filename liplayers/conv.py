"""Convolutional 1-Lipschitz layers with guaranteed operator-norm bounds.

* :class:`OrthoConv2d` — exactly orthogonal convolution (BCOP: Björck-orthonormalized
  projectors composed into a k×k kernel, Li et al. 2019), kept on the manifold by
  retraction so a training step costs one ordinary convolution plus a few tiny matrix
  products. Stride s by invertible downsampling (pixel unshuffle) followed by the
  convolution; ``in ≠ out`` semi-orthogonal. 1×1 kernels are dense Björck layers over channels.
* :class:`SpectralConv2d` — kernel divided by the spectral norm of the *convolution operator*
  (power iteration on the operator and its adjoint in training; exact FFT norm in eval).
* :class:`RKOConv2d` — reshaped-kernel Björck, rescaled by 1/sqrt(m_h·m_w) (m = patch
  multiplicity) so that it is provably 1-Lipschitz.
* Guaranteed bounds for plain ``nn.Conv2d`` registered with
  :func:`~liplayers.lipschitz.register_lipschitz_bound`.

Every ``lipschitz_bound`` is computed from the kernel the layer actually uses in eval mode
(see :mod:`liplayers.functional.conv` for the mathematics): never from the intention that
it is orthogonal.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

from .functional.conv import (
    _pair,
    circular_conv2d,
    _spatial,
    circular_conv_norm,
    conv2d_lipschitz_bound,
    conv_operator_power_iteration,
    grouped_to_dense_kernel,
    resolve_padding,
    window_multiplicity,
)
from .functional.orthogonalization import bjorck_step, gram
from .functional.spectral import gram_spectral_bound, spectral_norm_exact
from .lipschitz import LipschitzModule, register_lipschitz_bound
from .parametrizations import BjorckOrthonormal, _compute_dtype, eval_mode_weight, orthogonal_init_

__all__ = ["OrthoConv2d", "SpectralConv2d", "RKOConv2d", "bcop_kernel", "retract_semi_orthogonal_"]

_MARGIN = 1.0 + 1e-9
Size2 = Union[int, Tuple[int, int]]


def _version_key(*xs: Tensor) -> tuple:
    return tuple((x._version, x.data_ptr(), x.dtype, x.device, tuple(x.shape)) for x in xs)


def _check_padding_mode(mode: str, allowed: Sequence[str], layer: str) -> None:
    if mode not in allowed:
        if mode in ("reflect", "replicate"):
            raise ValueError(
                f"{layer}: padding_mode={mode!r} copies border pixels (the padding operator has norm up to "
                f"sqrt(3) or more), so the layer cannot be orthogonal or 1-Lipschitz; use one of {tuple(allowed)}"
            )
        raise ValueError(f"{layer}: padding_mode must be one of {tuple(allowed)}, got {mode!r}")


# ---- retraction onto the Stiefel manifold (batched, no grad) ----------------------------------
def retract_semi_orthogonal_(w: Tensor, tol: Optional[float] = None, max_iterations: int = 30) -> int:
    """Replace ``w`` (..., m, n) in place by its (semi-)orthonormal polar factor; returns #steps.

    Computed in float64 (the matrices are small) with Björck steps on the smaller Gram side,
    stopping when ``‖WᴴW − I‖_F`` (a guaranteed bound of the spectral error) is ≤ ``tol``
    for every matrix of the batch; far from the manifold (‖WᴴW − I‖₂ possibly > 0.9, from
    min(‖·‖_F, ‖·‖_∞)) ``w`` is first divided by a guaranteed bound of its norm. Default tol: 1e-12 for float64, 1e-7 for float32 (below
    float32 resolution, so the stored value is orthonormal to float32 rounding).
    """
    if tol is None:
        tol = 1e-12 if w.dtype == torch.float64 else 1e-7
    with torch.no_grad():
        x = w.detach().to(torch.float64)
        eye = torch.eye(min(x.shape[-2:]), dtype=x.dtype, device=x.device)
        steps = 0
        for _ in range(max_iterations):
            a = gram(x)
            d = a - eye
            err = float(torch.linalg.matrix_norm(d).max())  # ‖A − I‖_F ≥ ‖A − I‖₂
            if not math.isfinite(err):
                raise ValueError("cannot orthonormalize a weight with non-finite values")
            if err <= tol:
                break
            if err > 0.9:  # ‖A − I‖₂ ≤ min(‖·‖_F, ‖·‖_∞); < 1 keeps every σ² in (0, 2): Björck converges
                spec = min(err, float(d.abs().sum(-1).amax()))
                if spec > 0.9:
                    x = x / gram_spectral_bound(x).to(x.dtype)[..., None, None]
                    a = gram(x)
            x = bjorck_step(x, a)
            steps += 1
        w.copy_(x.to(w.dtype))
    return steps


# ---- BCOP kernel construction ------------------------------------------------------------------
def _compose_tap(k: Tensor, q: Tensor, axis: int, left: bool) -> Tensor:
    """Compose kernel ``k`` (o, i, h, w) with the 2-tap orthogonal kernel [P, I − P], P = QQᵀ.

    ``left=True``: the tap is applied after k (kernel T ∘ K); else before (K ∘ T). ``axis``
    2 (height) or 3 (width). The symbol of the tap, P + (I − P)e^{−iω}, is unitary when Q has
    orthonormal columns, so the symbol of the result is that of k times a unitary.
    """
    if left:
        pk = torch.einsum("cr,dr,dihw->cihw", q, q, k)  # P K
    else:
        pk = torch.einsum("ochw,cr,dr->odhw", k, q, q)  # K P
    rest = k - pk
    if axis == 2:
        return F.pad(pk, (0, 0, 0, 1)) + F.pad(rest, (0, 0, 1, 0))
    return F.pad(pk, (0, 1, 0, 0)) + F.pad(rest, (1, 0, 0, 0))


def bcop_kernel(ortho: Tensor, projectors: Tensor, kernel_size: Tuple[int, int]) -> Tensor:
    """The BCOP kernel (out, in, kh, kw) from an orthonormal matrix and projector bases.

    With H = ``ortho`` (out × in, orthonormal rows if out ≤ in, columns otherwise) and
    Q_t = ``projectors[t]`` (c × r, orthonormal columns, c = max(out, in)), the kernel's symbol
    is ``H · Π_t T̂_t(ω)`` (out ≤ in) or ``Π_t T̂_t(ω) · H`` (out > in), with
    T̂_t(ω) = Q_tQ_tᵀ + (I − Q_tQ_tᵀ)e^{−iω_axis} unitary: the symbol is (semi-)unitary at
    every frequency, so the circular convolution is exactly orthogonal on every grid and the
    zero-padded one has norm ≤ 1. The first kh − 1 projectors make taps along the height,
    the next kw − 1 along the width. Differentiable.
    """
    kh, kw = kernel_size
    out, cin = ortho.shape
    n_taps = (kh - 1) + (kw - 1)
    if projectors.shape[0] != n_taps:
        raise ValueError(f"expected {n_taps} projector bases for kernel {kernel_size}, got {projectors.shape[0]}")
    left = out > cin
    k = ortho[:, :, None, None]
    axes = [2] * (kh - 1) + [3] * (kw - 1)
    for t, axis in enumerate(axes):
        k = _compose_tap(k, projectors[t], axis, left)
    return k.contiguous()  # einsum may return a permuted layout: conv2d is ~20% slower on it


def _bcop_structural_bound(ortho: Tensor, projectors: Tensor, kernel_size: Tuple[int, int],
                           kernel_used: Tensor) -> float:
    """Input-size-independent guaranteed bound of the BCOP convolution actually used.

    In exact arithmetic the kernel K* built from these (float) factors has symbol norm
    ≤ ‖H‖₂ · Π_t max(1, 2‖Q_t‖₂² − 1): each tap's symbol P + (I − P)z (|z| = 1, P = QQᵀ ⪰ 0)
    is normal with eigenvalues λ + (1 − λ)z, |λ + (1 − λ)z| ≤ λ + |1 − λ|. The kernel used
    differs from K* by rounding: D = K_used − K₆₄ (K₆₄ recomposed in float64, whose own
    error ~1e-15 is covered by the 1e-9 margin) adds at most Σ_ab ‖D_ab‖_F (triangle
    inequality over the taps, valid on every grid and for zero padding).
    """
    with torch.no_grad():
        h64 = ortho.detach().to(torch.float64)
        q64 = projectors.detach().to(torch.float64)
        b = float(spectral_norm_exact(h64))
        if q64.shape[0]:
            qn = torch.linalg.matrix_norm(q64, ord=2)
            b *= float(torch.clamp(2 * qn**2 - 1, min=1.0).prod())
        k64 = bcop_kernel(h64, q64, kernel_size)
        d = kernel_used.detach().to(torch.float64) - k64
        b += float(torch.linalg.matrix_norm(d.permute(2, 3, 0, 1)).sum())
        return b * _MARGIN


class OrthoConv2d(LipschitzModule):
    r"""Exactly orthogonal 2-D convolution (BCOP), drop-in for ``nn.Conv2d``.

    Shapes: (B, in, H, W) → (B, out, H', W'), H' = H/s with 'same' padding (H divisible by the
    stride s). The layer is x ↦ conv(unshuffle_s(x), K) + b with ``unshuffle_s`` the pixel
    unshuffle (a permutation: in → in·s² channels, H → H/s) and K the BCOP kernel
    (:func:`bcop_kernel`) of size k_c = ⌈k/s⌉ on the coarse grid, so that its receptive field
    contains that of a k×k stride-s convolution (``kernel_size`` is the receptive field on the
    input grid; pass ``stride=1`` and your own :class:`~liplayers.pooling.InvertibleDownsampling`
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


def _pads_arg(pads) -> Union[str, Tuple[int, int]]:
    """A ``padding`` argument for conv2d_lipschitz_bound reproducing resolved pads."""
    (pt, pb), (pl, pr) = pads
    if pt == pb and pl == pr:
        return (pt, pl)
    return "same"


# ---- spectral normalization of the convolution operator ---------------------------------------
class _OperatorNormalized(nn.Module):
    r"""Parametrization K ↦ K / ‖A_K‖ for the convolution operator A_K at a configured size.

    The normalizing operator is the circular convolution on the grid N (N = H for circular
    'same' padding; N = H + p_top + p_bottom rounded up to the stride for zero padding), whose
    norm is exactly computable by FFT and is a guaranteed upper bound of the layer's operator
    norm (:mod:`liplayers.functional.conv`). Training: power iteration on that operator and its
    adjoint from a persistent buffer ``u`` (``iterations`` per forward), σ = ‖A_K û‖
    differentiable in K (a lower bound converging to ‖A_K‖). Eval: exact FFT norm (float64 SVD
    per frequency), computed once per parameter version; the eval operator norm is ≤ 1.
    """

    def __init__(self, kernel_size, stride, padding, dilation, padding_mode, groups, input_size,
                 iterations: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.padding_mode = padding_mode
        self.groups = groups
        self.iterations = iterations
        self.input_size: Optional[Tuple[int, int]] = None
        self.register_buffer("u", torch.empty(0))
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tensor] = None
        if input_size is not None:
            self.set_input_size(_spatial(input_size))

    def set_input_size(self, hw: Tuple[int, int]) -> None:
        self.input_size = (int(hw[0]), int(hw[1]))
        self._cache_key = None

    def majorant(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """(grid N, stride) of the circular convolution whose norm normalizes the kernel."""
        if self.input_size is None:
            raise RuntimeError("SpectralConv2d: the input size is not known yet (pass input_size or run a forward)")
        pads = resolve_padding(self.padding, self.kernel_size, self.dilation)
        span = [self.dilation[i] * (self.kernel_size[i] - 1) for i in range(2)]
        same = all(pads[i][0] + pads[i][1] == span[i] for i in range(2))
        n = self.input_size
        s = self.stride
        if self.padding_mode == "circular" and same:
            if n[0] % s[0] == 0 and n[1] % s[1] == 0:
                return n, s
            return n, (1, 1)
        grid = tuple(-(-(n[i] + pads[i][0] + pads[i][1]) // s[i]) * s[i] for i in range(2))
        return grid, s  # type: ignore[return-value]

    def _op(self, k: Tensor):
        (nh, nw), s = self.majorant()
        span = [self.dilation[i] * (self.kernel_size[i] - 1) for i in range(2)]

        def op(x: Tensor) -> Tensor:
            xp = F.pad(x, (0, span[1], 0, span[0]), mode="circular")
            return F.conv2d(xp, k, None, s, 0, self.dilation, self.groups)

        return op

    def exact_norm(self, k: Tensor) -> float:
        grid, s = self.majorant()
        dense = grouped_to_dense_kernel(k.detach().to(torch.float64), self.groups)
        return circular_conv_norm(dense, grid, s, self.dilation)

    def forward(self, v: Tensor) -> Tensor:
        if self.training:
            if self.input_size is None:
                return v  # shape inference before the first real forward (should not happen)
            grid, _ = self.majorant()
            shape = (1, v.shape[1] * self.groups, grid[0], grid[1])
            cd = _compute_dtype(v.dtype)  # power iteration and V/σ in float32 at least
            if self.u.shape != shape:
                g = torch.Generator(device="cpu").manual_seed(0)
                self.u = torch.randn(shape, generator=g, dtype=cd).to(v.device)
            kd = v.detach().to(cd)
            _, u = conv_operator_power_iteration(self._op(kd), self.u.to(cd), self.iterations)
            if not bool(torch.isfinite(u).all()):
                raise ValueError("SpectralConv2d: the kernel contains non-finite values (NaN or Inf)")
            with torch.no_grad():
                self.u.copy_(u)
            sigma = self._op(v.to(cd))(u).norm()
            return (v.to(cd) / sigma).to(v.dtype)
        key = (v._version, v.data_ptr(), v.dtype, v.device, self.input_size)
        if self._cache_key != key:
            if self.input_size is None:
                raise RuntimeError("SpectralConv2d: the input size is not known (pass input_size or run a forward)")
            with torch.no_grad():
                self._cache = (v.detach().to(torch.float64) / self.exact_norm(v)).to(v.dtype)
            self._cache_key = key
        return self._cache

    def right_inverse(self, w: Tensor) -> Tensor:
        return w

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the power-iteration buffer is allocated at the first forward (its shape depends on the
        # input size): adopt the saved shape so checkpoints load into a fresh module
        saved = state_dict.get(prefix + "u")
        if saved is not None and saved.shape != self.u.shape:
            self.u = torch.empty_like(saved, device=self.u.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class _ConvLipschitzMixin(LipschitzModule):
    """Shared eval-weight / export / bound code for parametrized ``nn.Conv2d`` subclasses."""

    def eval_weight(self) -> Tensor:
        return eval_mode_weight(self)

    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval operator (:func:`conv2d_lipschitz_bound` of its kernel)."""
        return conv2d_lipschitz_bound(self.eval_weight(), input_shape, self.stride, self.padding,
                                      self.dilation, self.padding_mode, self.groups)

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        if (self.padding_mode == "circular" and self.stride == (1, 1)
                and all(p0 == p1 for p0, p1 in zip(self._reversed_padding_repeated_twice[::2],
                                                     self._reversed_padding_repeated_twice[1::2]))
                and all(self.dilation[i] * (self.kernel_size[i] - 1) == 2 * self._reversed_padding_repeated_twice[2 - 2 * i]
                        for i in range(2))):
            return circular_conv2d(input, weight, bias, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)

    def to_torch(self) -> nn.Conv2d:
        k = self.eval_weight()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, bias=self.bias is not None, padding_mode=self.padding_mode,
                         device=k.device, dtype=k.dtype)
        with torch.no_grad():
            conv.weight.copy_(k)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv


def _normalize_conv_padding(padding, kernel_size, stride, dilation):
    """nn.Conv2d rejects 'same' with stride > 1: map it to the symmetric (k−1)/2·d padding."""
    ks, st, dl = _pair(kernel_size), _pair(stride), _pair(dilation)
    if padding == "same" and st != (1, 1):
        if any(d * (k - 1) % 2 for k, d in zip(ks, dl)):
            raise ValueError("padding='same' with stride > 1 needs an odd (dilated) kernel size")
        return tuple(d * (k - 1) // 2 for k, d in zip(ks, dl))
    return padding


class SpectralConv2d(_ConvLipschitzMixin, nn.Conv2d):
    r"""``nn.Conv2d`` whose kernel is divided by the spectral norm of its convolution operator.

    Drop-in for ``nn.Conv2d`` (subclass; ``weight`` is the normalized kernel, the free kernel
    is ``parametrizations.weight.original``). Shapes as ``nn.Conv2d``. Unlike normalizing the
    reshaped kernel (``torch.nn.utils.spectral_norm``, which can leave the operator norm well
    above 1), the normalization is by the norm of the operator at the configured input size:

    * training: power iteration on the operator and its adjoint (autograd), persistent
      buffer, ``power_iterations`` per step, σ differentiable (Miyato et al. 2018);
    * eval: the exact FFT norm, so the eval operator has norm ≤ 1 (= 1 for circular padding;
      for zero padding the normalizer is the circular convolution on the zero-padded grid,
      a guaranteed upper bound of the zero-padded operator's norm, tight up to border effects).

    ``input_size`` (H, W) fixes the size; if None it is taken from the first forward.
    :meth:`lipschitz_bound` computes a guaranteed bound of the eval operator for the given
    ``input_shape`` (size-independent, slightly above 1, when None).

    Args:
        in_channels, ..., padding_mode: as ``nn.Conv2d``; padding default ``'same'``;
            padding_mode ``'zeros'`` or ``'circular'``.
        input_size: (H, W) of the inputs, or None.
        power_iterations: power-iteration steps per training forward.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *,
                 input_size: Optional[Sequence[int]] = None, power_iterations: int = 1) -> None:
        _check_padding_mode(padding_mode, ("zeros", "circular"), "SpectralConv2d")
        if power_iterations < 1:
            raise ValueError(f"power_iterations must be >= 1, got {power_iterations}")
        padding = _normalize_conv_padding(padding, kernel_size, stride, dilation)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        param = _OperatorNormalized(self.kernel_size, self.stride, self.padding, self.dilation, padding_mode,
                                    groups, input_size, power_iterations)
        parametrize.register_parametrization(self, "weight", param)

    @property
    def normalizer(self) -> _OperatorNormalized:
        return self.parametrizations.weight[0]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4 and self.normalizer.input_size != tuple(x.shape[-2:]):
            if self.normalizer.input_size is None:
                self.normalizer.set_input_size(tuple(x.shape[-2:]))
        return super().forward(x)


class _RKONormalized(nn.Module):
    """Parametrization K ↦ scale · reshape(polar(reshape(K, (out, in·kh·kw)))) (Björck)."""

    def __init__(self, scale: float, **bjorck_kwargs) -> None:
        super().__init__()
        self.scale = scale
        self.bjorck = BjorckOrthonormal(**bjorck_kwargs)

    def forward(self, v: Tensor) -> Tensor:
        w = self.bjorck(v.reshape(v.shape[0], -1))
        return w.reshape(v.shape) * self.scale

    def right_inverse(self, w: Tensor) -> Tensor:
        return w


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

    Args: as ``nn.Conv2d`` (padding default 'same'; padding_mode 'zeros' or 'circular';
    groups 1); ``tol``, ``max_iterations``: Björck settings.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
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

    def reset_parameters(self) -> None:
        w = self.parametrizations.weight.original if parametrize.is_parametrized(self, "weight") else self.weight
        with torch.no_grad():
            orthogonal_init_(w.view(w.shape[0], -1))
            if self.bias is not None:
                self.bias.zero_()

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


# ---- bounds of plain torch convolutions -------------------------------------------------------
def _conv_eval_weight(m: nn.Conv2d) -> Tensor:
    """The kernel ``m`` uses in eval mode (parametrizations and torch's hook spectral_norm)."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    was_training = m.training
    m.eval()
    try:
        with torch.no_grad():
            for hook in m._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    return hook.compute_weight(m, do_power_iteration=False).detach()
            return m.weight.detach()
    finally:
        m.train(was_training)


@register_lipschitz_bound(nn.Conv2d)
def _conv2d_bound(m: nn.Conv2d, input_shape) -> float:
    """Guaranteed bound of a plain ``nn.Conv2d`` (exact FFT for circular; padded-circular else)."""
    return conv2d_lipschitz_bound(_conv_eval_weight(m), input_shape, m.stride, m.padding, m.dilation,
                                  m.padding_mode, m.groups)
