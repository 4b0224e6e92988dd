r"""Orthogonal convolution by the Cayley transform in the Fourier domain."""
from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.skew import cayley, fft_symbol, spectral_conv2d
from ..lipschitz import InputShapeRequiredError, LipschitzModule
from ..parametrizations._common import compute_dtype, version_key
from ..utils import accepts_renamed_kwargs
from ._conv_common import _input_hw, _kaiming_reset
from .soc import Size2, _check_same_conv

__all__ = ["CayleyConv2d"]


class _FourierConv2d(LipschitzModule):
    """Shared machinery of the layers that apply per-frequency matrices Q(ω) to rfft2(x).

    Subclasses implement ``_symbol(grid, dtype, train)`` (the (H, W//2+1, out, in) complex
    matrices actually applied) and may override ``_train_apply``. Padding: ``'circular'`` — the
    layer is the circular convolution with symbol Q on the H×W grid; ``'zeros'`` — the input
    is zero-padded by the kernel's 'same' amounts, the circular convolution runs on that
    larger grid and the output is cropped back (an isometric embedding, the map, a coordinate
    restriction: norm ≤ max ‖Q(ω)‖). Eval: Q is computed once per parameter version and grid
    (complex128, rounded to the working precision) and cached.
    """

    def _init_common(self, in_channels, out_channels, ks, padding, padding_mode) -> None:
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = ks, (1, 1), padding
        self.dilation, self.groups, self.padding_mode = (1, 1), 1, padding_mode
        self._cache_key: Optional[tuple] = None
        self._cache: Dict[Tuple[int, int], Tensor] = {}

    # -- to implement ---------------------------------------------------------------------------
    def _params(self) -> Tuple[Tensor, ...]:
        raise NotImplementedError

    def _symbol(self, grid: Tuple[int, int], dtype: torch.dtype, train: bool) -> Tensor:
        raise NotImplementedError

    def _train_apply(self, x: Tensor, grid: Tuple[int, int]) -> Tensor:
        return spectral_conv2d(x, self._symbol(grid, compute_dtype(x.dtype), train=True))

    # -- shared ---------------------------------------------------------------------------------
    def _pads(self) -> Tuple[int, int, int, int]:
        (kh, kw) = self.kernel_size
        if self.padding_mode == "circular":
            return (0, 0, 0, 0)
        return ((kw - 1) // 2, kw - 1 - (kw - 1) // 2, (kh - 1) // 2, kh - 1 - (kh - 1) // 2)

    def _grid(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        pl, pr, pt, pb = self._pads()
        return (int(hw[0]) + pt + pb, int(hw[1]) + pl + pr)

    @torch.compiler.disable  # the version check must run on every call
    def eval_symbol(self, grid: Tuple[int, int]) -> Tensor:
        """The per-frequency matrices applied in eval mode on a ``grid`` (cached), detached."""
        key = version_key(*self._params())
        if self._cache_key != key:
            self._cache = {}
            self._cache_key = key
        grid = (int(grid[0]), int(grid[1]))
        if grid not in self._cache:
            for p in self._params():
                if not bool(torch.isfinite(p).all()):
                    raise ValueError(f"{type(self).__name__}: the parameters contain non-finite values (NaN or Inf)")
            with torch.no_grad():
                q = self._symbol(grid, torch.float64, train=False)
                cd = compute_dtype(self._params()[0].dtype)
                self._cache[grid] = q.to(torch.complex128 if cd == torch.float64 else torch.complex64)
        return self._cache[grid]

    @accepts_renamed_kwargs({"input_size": "input_shape"})
    def eval_weight(self, input_shape=None) -> Tensor:
        """Per-frequency matrices (H', W'//2+1, out, in) used in eval for inputs of ``input_shape``.

        (H', W') is the grid the circular convolution runs on: (H, W) for circular padding,
        (H + kh − 1, W + kw − 1) for zero padding. ``input_shape``: (C, H, W) of one input without
        the batch dimension (a spatial size (H, W) is also accepted), as for :meth:`lipschitz_bound`.
        """
        if input_shape is None:
            raise ValueError(f"{type(self).__name__}: the weight used depends on the input size; pass input_shape")
        return self.eval_symbol(self._grid(tuple(input_shape)[-2:])).clone()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__} expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        pads = self._pads()
        if any(pads):
            x = F.pad(x, pads)
        grid = (x.shape[-2], x.shape[-1])
        if self.training:
            y = self._train_apply(x, grid)
        else:
            y = spectral_conv2d(x, self.eval_symbol(grid))
        if any(pads):
            y = y[..., pads[2]: pads[2] + h, pads[0]: pads[0] + w]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def lipschitz_bound(self, input_shape=None) -> float:
        """max over the frequencies of the exact (float64) norm of the matrices used at this input size.

        The operator is block-diagonal in the Fourier basis with these blocks (zero padding:
        restricted to the input, which can only lower the norm), so this is its exact norm
        (up to the +1e-9 margin, and up to the FFT's rounding, which the certificate's
        rounding allowance covers). ``input_shape`` is required: the matrices depend on it.
        """
        if input_shape is None:
            raise ValueError(f"{type(self).__name__}: the operator depends on the input size; pass input_shape "
                             "(C, H, W) to lipschitz_bound")
        q = self.eval_symbol(self._grid(_input_hw(self, input_shape, self.in_channels))).to(torch.complex128)
        return float(torch.linalg.matrix_norm(q, ord=2).max()) * (1.0 + 1e-9)

    def to_torch(self, input_shape=None) -> nn.Conv2d:
        r"""``nn.Conv2d`` computing the eval-mode map on inputs of spatial size H×W (and only that size).

        A circular convolution on a G_h×G_w torus is y[p] = Σ_s h[p − s mod G] x[s], h its impulse
        response h = irfft2(Q) (the response to a unit impulse at the origin). Hence:

        * ``'circular'`` (G = (H, W)): ``nn.Conv2d(in, out, (H, W), padding='same',
          padding_mode='circular')`` with kernel taps K[q] = h[(p₀ − q) mod G], p₀ = ((H−1)//2,
          (W−1)//2) the left padding of torch's 'same';
        * ``'zeros'`` (G = (H + kh − 1, W + kw − 1), the input zero-padded, the output cropped):
          the offsets p − s of two pixels of the H×W image lie in [−(H−1), H−1], so the map is the
          zero-padded ``nn.Conv2d(in, out, (2H − 1, 2W − 1), padding=(H − 1, W − 1))`` with
          K[q] = h[(H − 1 − q) mod G].

        The taps are computed in float64 from the per-frequency matrices the eval forward applies
        (the ones :meth:`lipschitz_bound` measures) and rounded to the weight's dtype. The kernel is
        as large as the image (O(H²W²·in·out) operations per image instead of an FFT): meant for
        deployment where FFTs are unavailable (ONNX), at the input size it is exported for.

        Args:
            input_shape: (C, H, W) of one input without the batch dimension (or (H, W)); required.

        Raises:
            InputShapeRequiredError: ``input_shape`` is None (the map depends on the input size).
        """
        if input_shape is None:
            raise InputShapeRequiredError(
                f"{type(self).__name__}.to_torch: the equivalent nn.Conv2d has an H×W kernel that depends on the "
                "input size; pass input_shape=(C, H, W)")
        h, w = _input_hw(self, input_shape, self.in_channels)
        grid = self._grid((h, w))
        q = self.eval_symbol(grid)
        dtype = q.real.dtype
        kernel = _impulse_kernel(q, grid, (h, w), self.padding_mode == "circular").to(dtype)
        if self.padding_mode == "circular":
            size, padding, mode = (h, w), "same", "circular"
        else:
            size, padding, mode = (2 * h - 1, 2 * w - 1), (h - 1, w - 1), "zeros"
        conv = nn.Conv2d(self.in_channels, self.out_channels, size, 1, padding, 1, 1, bias=self.bias is not None,
                         padding_mode=mode, device=kernel.device, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(kernel)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}, bias={self.bias is not None}")


def _impulse_kernel(symbol: Tensor, grid: Tuple[int, int], hw: Tuple[int, int], circular: bool) -> Tensor:
    """float64 cross-correlation kernel of the circular convolution with per-frequency ``symbol`` on
    ``grid``, as an ``nn.Conv2d`` on H×W inputs: (out, in, H, W) with 'same' circular padding, or
    (out, in, 2H − 1, 2W − 1) with zero padding (H − 1, W − 1) (see ``_FourierConv2d.to_torch``)."""
    with torch.no_grad():
        q = symbol.detach().to(torch.complex128).permute(2, 3, 0, 1)  # (out, in, Gh, Gw//2+1)
        resp = torch.fft.irfft2(q, s=grid)  # impulse response h[o, i, n]
        h, w = hw
        dev = resp.device
        if circular:
            ih = torch.remainder((h - 1) // 2 - torch.arange(h, device=dev), grid[0])
            iw = torch.remainder((w - 1) // 2 - torch.arange(w, device=dev), grid[1])
        else:
            ih = torch.remainder(h - 1 - torch.arange(2 * h - 1, device=dev), grid[0])
            iw = torch.remainder(w - 1 - torch.arange(2 * w - 1, device=dev), grid[1])
        return resp[:, :, ih][:, :, :, iw]


class CayleyConv2d(_FourierConv2d):
    r"""Exactly orthogonal convolution: per frequency Q(ω) = (I − A(ω))(I + A(ω))⁻¹.

    A(ω) = K̂(ω) − K̂(ω)ᴴ with K̂ the transfer matrices (:func:`~liplayers.functional.skew.fft_symbol`)
    of the kernel K = α·V/‖V‖_F (V the stored ``weight`` (out, in, kh, kw), α the learnable
    scalar ``alpha``, initialized to ‖V‖_F as in the paper). Q(ω) is unitary, and with
    out ≠ in the first columns (out > in) or rows (out < in) of the square transform are kept
    (:func:`~liplayers.functional.skew.cayley`: one min(in, out)² inverse per frequency).
    The layer computes y = irfft2(Q · rfft2(x)) + b.

    Guarantee: ``padding_mode='circular'`` — the circular convolution on the H×W torus with
    symbol Q, orthogonal (isometry for out ≥ in, co-isometry for out < in) to working
    precision; ``'zeros'`` — the same on the zero-padded (H + kh − 1)×(W + kw − 1) torus,
    cropped: norm ≤ 1. :meth:`lipschitz_bound` is the exact norm of the matrices used.
    The operator depends on the input size: the matrices are built for each size met (in eval
    cached per size and parameter version), and the bound needs ``input_shape``.

    Args:
        in_channels, out_channels, kernel_size, bias, device, dtype: as ``nn.Conv2d``
            (the kernel may be as large as the image: it wraps around).
        stride, dilation, groups: must be 1.
        padding: ``'same'`` (default) or the equivalent int (k − 1)/2 (odd k).
        padding_mode: ``'circular'`` (default, exactly orthogonal) or ``'zeros'``.

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H, W)

    :meth:`to_torch` (``input_shape`` required) returns the equivalent ``nn.Conv2d`` for one input
    size: an H×W kernel with circular padding (a (2H − 1)×(2W − 1) kernel with zero padding).

    Trockman & Kolter, "Orthogonalizing Convolutional Layers with the Cayley Transform",
    ICLR 2021.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "circular", device=None, dtype=None) -> None:
        super().__init__()
        ks = _check_same_conv("CayleyConv2d", in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups, padding_mode)
        self._init_common(in_channels, out_channels, ks, padding, padding_mode)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *ks, **fk))
        self.alpha = nn.Parameter(torch.empty((), **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's kernel initialization, α = ‖V‖_F (K = V at initialization), zero bias."""
        _kaiming_reset(self)
        with torch.no_grad():
            self.alpha.fill_(float(self.weight.norm()))

    def _params(self) -> Tuple[Tensor, ...]:
        return (self.weight, self.alpha)

    def _symbol(self, grid, dtype, train: bool) -> Tensor:
        v = self.weight.to(dtype)
        k = self.alpha.to(dtype) * v / v.norm().clamp_min(torch.finfo(dtype).tiny)
        return cayley(fft_symbol(k, grid))
