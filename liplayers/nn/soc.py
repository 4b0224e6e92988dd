r"""Skew-orthogonal convolution (SOC) with a sound truncation of the exponential series."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional.conv import _pair, circular_conv2d, circular_conv_norm, conv2d_lipschitz_bound
from ..functional.skew import (
    conv_exponential,
    exp_series_matrices,
    exp_tail_bound,
    exp_terms_for_tolerance,
    fft_symbol,
    skew_kernel,
    spectral_conv2d,
)
from ..lipschitz import InputShapeRequiredError, LipschitzModule
from ..parametrizations._common import compute_dtype, version_key
from ..utils import accepts_renamed_kwargs, renamed_attribute
from ._conv_common import _input_hw, _positive_int

__all__ = ["SOCConv2d"]

Size2 = Union[int, Tuple[int, int]]


def _check_same_conv(layer: str, in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                     padding_mode, allowed_modes=("zeros", "circular")) -> Tuple[int, int]:
    """Validate the nn.Conv2d-style arguments of a stride-1 'same' layer; returns the kernel size."""
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
        _positive_int(layer, name, v)
    ks = _pair(kernel_size, "kernel_size")
    if min(ks) < 1:
        raise ValueError(f"{layer}: kernel_size must be >= 1, got {kernel_size!r}")
    if _pair(stride, "stride") != (1, 1):
        raise ValueError(f"{layer}: only stride 1 is supported (got {stride!r}); downsample with an invertible "
                         "pixel unshuffle (liplayers' InvertibleDownsampling) before the layer")
    if _pair(dilation, "dilation") != (1, 1):
        raise ValueError(f"{layer}: only dilation 1 is supported, got {dilation!r}")
    if groups != 1:
        raise ValueError(f"{layer}: groups must be 1, got {groups!r}")
    if padding_mode not in allowed_modes:
        raise ValueError(f"{layer}: padding_mode must be one of {tuple(allowed_modes)}, got {padding_mode!r}")
    if isinstance(padding, str):
        if padding != "same":
            raise ValueError(f"{layer}: padding must be 'same' (the layer maps H×W to H×W), got {padding!r}")
    elif _pair(padding, "padding") != tuple((k - 1) // 2 for k in ks) or any(k % 2 == 0 for k in ks):
        raise ValueError(f"{layer}: padding must be 'same' (or (k−1)/2 for an odd kernel), got {padding!r}")
    return ks


class SOCConv2d(LipschitzModule):
    r"""Skew-orthogonal convolution: y = T_k(A) x + b, T_k(A) = Σ_{i≤k} Aⁱ/i! ≈ exp(A).

    A is the stride-1 'same' convolution with the skew-symmetric kernel
    A_K = (ρ/σ) (K − Kᵀ) (Kᵀ: channels swapped, taps flipped; :func:`~liplayers.functional.skew.skew_kernel`),
    so Aᵀ = −A exactly (zero or circular padding) and exp(A) is orthogonal. σ ≈ ‖K − Kᵀ‖ as an
    operator (power iteration on the circular convolution on a fixed ``grid``×``grid`` torus,
    ``n_power_iterations`` per training step from a persistent buffer, σ differentiable; in eval
    the exact maximum over that grid), so ‖A‖ ≈ ρ = ``correction`` (0.7 as in the paper).
    Channel change as in the paper: with c = max(in, out) channels, the input is zero-padded
    to c channels and the first ``out_channels`` output channels are kept.

    **Soundness of the truncation.** The series is cut after k terms, and T_k(A) is not
    orthogonal. In eval mode, a *guaranteed* a ≥ ‖A‖ (the size-independent symbol bound of the
    kernel used, :func:`~liplayers.functional.conv.conv2d_lipschitz_bound`) fixes
    k = the smallest number of terms with tail(a, k) = Σ_{i>k} aⁱ/i! ≤ ``tol`` (1e-6 in
    float32, 1e-12 in float64; :func:`~liplayers.functional.skew.exp_tail_bound`), cached per
    parameter version (``eval_terms``). :meth:`lipschitz_bound` returns
    ``1 + tail(a', k)``, a' the bound of ‖A‖ at the given input size or the size-independent
    one: since exp(A) is exactly orthogonal and ‖T_k(A) − exp(A)‖ ≤ tail, this bounds the
    map that runs (in exact arithmetic with the float kernel used; the forward's own rounding
    is the certificate's rounding allowance). With circular padding the eval forward applies
    T_k(A) in the Fourier domain (the circular convolution with per-frequency matrices
    T_k(Â(ω)), cached per input size: one FFT, one product per frequency and one inverse FFT
    instead of k convolutions), and the bound at a given size is the exact norm of those
    matrices. Training uses ``train_terms`` terms (default 5 as in the paper: tail ≈ 2e-4 at ‖A‖ = 0.7).

    Args:
        in_channels, out_channels, kernel_size, bias, device, dtype: as ``nn.Conv2d``
            (odd kernel sizes).
        stride, dilation, groups: must be 1 (stride: use an invertible downsampling first).
        padding: ``'same'`` (default) or the equivalent int (k − 1)/2.
        padding_mode: ``'zeros'`` (default, as ``nn.Conv2d``) or ``'circular'``.
        train_terms: series terms in training.
        tol: eval tolerance on the truncation tail (default 1e-6, 1e-12 for float64).
        correction: target operator norm ρ of A.
        max_terms: cap on eval terms (ValueError if the tolerance needs more).
        n_power_iterations: power iterations per training step for σ.
        grid: size of the torus on which σ is measured (at least the kernel size).

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H, W)

    :meth:`to_torch` (``input_shape`` required): with circular padding the eval map is one circular
    ``nn.Conv2d`` (a (1 + k(kh − 1))×(1 + k(kw − 1)) kernel, k = :attr:`eval_terms`, folded onto
    the input's torus when the input is smaller than half of it); with zero padding there is
    no such module (each power of A is truncated at the border) and it raises
    ``NotImplementedError`` (:func:`~liplayers.nn.export` keeps the layer, which exports to
    ONNX as it is).

    Singla & Feizi, "Skew Orthogonal Convolutions", ICML 2021.
    """

    @accepts_renamed_kwargs({"power_iterations": "n_power_iterations"})
    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None, *, train_terms: int = 5,
                 tol: Optional[float] = None, correction: float = 0.7, max_terms: int = 40,
                 n_power_iterations: int = 1, grid: int = 16) -> None:
        super().__init__()
        ks = _check_same_conv("SOCConv2d", in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups, padding_mode)
        if ks[0] % 2 == 0 or ks[1] % 2 == 0:
            raise ValueError(f"SOCConv2d: kernel sizes must be odd (a skew-symmetric 'same' convolution needs a "
                             f"centred kernel), got {ks}")
        _positive_int("SOCConv2d", "train_terms", train_terms)
        if tol is not None and not (isinstance(tol, (int, float)) and 0 < tol < 1):
            raise ValueError(f"SOCConv2d: tol must be in (0, 1), got {tol!r}")
        if not (isinstance(correction, (int, float)) and 0 < correction <= 2):
            raise ValueError(f"SOCConv2d: correction must be in (0, 2], got {correction!r}")
        _positive_int("SOCConv2d", "max_terms", max_terms)
        _positive_int("SOCConv2d", "n_power_iterations", n_power_iterations)
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < max(ks):
            raise ValueError(f"SOCConv2d: grid must be an integer >= the kernel size {max(ks)}, got {grid!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = ks, (1, 1), padding
        self.dilation, self.groups, self.padding_mode = (1, 1), 1, padding_mode
        self.train_terms, self.tol, self.correction = train_terms, tol, float(correction)
        self.max_terms, self.n_power_iterations, self.grid = max_terms, n_power_iterations, grid
        c = max(in_channels, out_channels)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(c, c, *ks, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        gen = torch.Generator(device="cpu").manual_seed(c)
        u = torch.randn(1, c, grid, grid, generator=gen, dtype=compute_dtype(self.weight.dtype)).to(device)
        self.register_buffer("u", u / u.norm())
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[Tuple[Tensor, int, float]] = None
        self._fft_cache: Dict[Tuple[int, int], Tensor] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal kernel of std 1/√c (as in the paper), zero bias; σ's power iteration warmed up."""
        with torch.no_grad():
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.weight.shape[0]))
            if self.bias is not None:
                self.bias.zero_()
        self._cache_key = None
        self._power_iteration(skew_kernel(self.weight.detach().to(self.u.dtype)), self._WARMUP)

    power_iterations = renamed_attribute("power_iterations", "n_power_iterations")

    _WARMUP = 50  # power iterations after (re)initialization, so the first training steps see σ converged

    @torch.no_grad()
    def _power_iteration(self, s: Tensor, iterations: int) -> Tensor:
        """Power iteration on AᵀA = −A² (A skew, circular on the grid) from the persistent vector."""
        u = self.u.to(s.dtype)
        for _ in range(iterations):
            u = -circular_conv2d(circular_conv2d(u, s), s)
            u = u / u.norm().clamp_min(torch.finfo(s.dtype).tiny)
        if not bool(torch.isfinite(u).all()):
            raise ValueError("SOCConv2d: the kernel contains non-finite values (NaN or Inf)")
        self.u.copy_(u)
        return u

    def _tol(self) -> float:
        if self.tol is not None:
            return float(self.tol)
        return 1e-12 if self.weight.dtype == torch.float64 else 1e-6

    # -- the skew kernel ------------------------------------------------------------------------
    def _train_kernel(self) -> Tensor:
        cd = compute_dtype(self.weight.dtype)
        s = skew_kernel(self.weight.to(cd))
        u = self._power_iteration(s.detach(), self.n_power_iterations)
        sigma = circular_conv2d(u, s).norm()  # ≤ ‖A_S‖, differentiable in the kernel
        return s * (self.correction / sigma.clamp_min(torch.finfo(cd).tiny))

    @torch.compiler.disable  # the version check must run on every call
    def _eval_cache(self) -> Tuple[Tensor, int, float]:
        key = version_key(self.weight)
        if self._cache is None or self._cache_key != key:
            with torch.no_grad():
                w = self.weight.detach()
                if not bool(torch.isfinite(w).all()):
                    raise ValueError("SOCConv2d: the kernel contains non-finite values (NaN or Inf)")
                s = skew_kernel(w.to(torch.float64))
                sigma = circular_conv_norm(s, (self.grid, self.grid)) / (1.0 + 1e-9)
                k = (s * (self.correction / sigma) if sigma > 0 else s).to(compute_dtype(w.dtype))
                a = conv2d_lipschitz_bound(k, None, 1, "same", 1, self.padding_mode)
                terms = exp_terms_for_tolerance(a, self._tol(), self.max_terms)
            self._cache = (k, terms, a)
            self._fft_cache = {}
            self._cache_key = key
        return self._cache

    @torch.compiler.disable
    def eval_symbol(self, size: Tuple[int, int]) -> Tensor:
        """Circular padding, eval: transfer matrices T_k(Â(ω)) (H, W//2+1, c, c) on an H×W grid, cached.

        The truncated series of circular convolutions is the circular convolution with these
        per-frequency matrices; computed in complex128 from the eval kernel, rounded to the
        working precision. The eval forward applies them by FFT (one product per frequency
        instead of k convolutions).
        """
        k, terms, _ = self._eval_cache()
        size = (int(size[0]), int(size[1]))
        if size not in self._fft_cache:
            with torch.no_grad():
                t = exp_series_matrices(fft_symbol(k.to(torch.float64), size), terms)
                self._fft_cache[size] = t.to(torch.complex128 if k.dtype == torch.float64 else torch.complex64)
        return self._fft_cache[size]

    @property
    def eval_terms(self) -> int:
        """Number of series terms used in eval mode (for the current weights)."""
        return self._eval_cache()[1]

    def eval_weight(self) -> Tensor:
        """The skew-symmetric kernel A used in eval mode (c, c, kh, kw), detached."""
        return self._eval_cache()[0].detach().clone()

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"SOCConv2d expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        c = self.weight.shape[0]
        if self.padding_mode == "circular" and (x.shape[-2] <= self.kernel_size[0] // 2
                                                or x.shape[-1] <= self.kernel_size[1] // 2):
            raise ValueError(f"SOCConv2d: circular padding needs H, W > kernel_size // 2, got {tuple(x.shape[-2:])}")
        if self.training:
            k, terms = self._train_kernel(), self.train_terms
        else:
            k, terms, _ = self._eval_cache()
        if c > self.in_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, c - self.in_channels))
        if not self.training and self.padding_mode == "circular":
            y = spectral_conv2d(x, self.eval_symbol(x.shape[-2:]))
        else:
            y = conv_exponential(x.to(k.dtype), k, terms, self.padding_mode).to(x.dtype)
        if c > self.out_channels:
            y = y[:, : self.out_channels]
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    # -- protocol -------------------------------------------------------------------------------
    def lipschitz_bound(self, input_shape=None) -> float:
        """Guaranteed bound of the eval map (class docstring).

        ``1 + tail(a, k)`` with a the size-independent bound of ‖A‖; with ``input_shape``:
        zero padding — a at that size; circular padding — the exact (float64) norm of the
        per-frequency matrices the eval forward applies at that size (block-diagonal operator).
        """
        k, terms, a = self._eval_cache()
        if input_shape is None:
            return (1.0 + exp_tail_bound(a, terms)) * (1.0 + 1e-9)
        hw = _input_hw(self, input_shape, self.in_channels)
        if self.padding_mode == "circular":
            sym = self.eval_symbol(hw).to(torch.complex128)
            return float(torch.linalg.matrix_norm(sym, ord=2).max()) * (1.0 + 1e-9)
        a = min(a, conv2d_lipschitz_bound(k, hw, 1, "same", 1, self.padding_mode))
        return (1.0 + exp_tail_bound(a, terms)) * (1.0 + 1e-9)

    def to_torch(self, input_shape=None) -> nn.Conv2d:
        r"""The eval map as one circular ``nn.Conv2d`` (circular padding only).

        A circular convolution is a polynomial in the cyclic shifts, so T_k(A) = Σ_{i≤k} Aⁱ/i! is the
        circular convolution whose kernel is the sum of the i-fold self-compositions of A's kernel:
        1 + k(kh − 1) taps per axis, whatever the input size (on a torus smaller than that the taps
        wrap around, which circular padding reproduces). The kernel is computed in float64 as the
        impulse response of T_k(Â(ω)) on a torus of exactly that size (no aliasing), its
        [:out_channels, :in_channels] block kept (the input is zero-padded to c channels, the
        first ``out_channels`` outputs are kept), and rounded to the weight's dtype.

        torch's circular padding needs (1 + k(kh − 1)) // 2 ≤ H (and W), so ``input_shape`` is
        required: when it allows, the returned module has that composed kernel (and is then
        valid for every input at least that large); for a smaller ``input_shape`` the kernel is
        folded onto that H×W torus instead (an H×W kernel, 'same' circular padding, valid for
        that size only), from the matrices the eval forward applies.

        **Zero padding has no equivalent ``nn.Conv2d``**: the zero-padded A is R C E (extend by
        zeros, convolve, restrict to the image), and A² = R C (E R) C E with E R the truncation to
        the image ≠ I, so near the border T_k(A) differs from the convolution with the composed
        kernel; it is not translation-invariant. ``NotImplementedError`` is raised (the layer
        itself uses standard convolutions only and exports to ONNX as it is).

        Args:
            input_shape: (C, H, W) (or (H, W)) of one input, see above.

        Raises:
            InputShapeRequiredError: ``input_shape`` is None.
            NotImplementedError: zero padding.
        """
        if self.padding_mode != "circular":
            raise NotImplementedError(
                "SOCConv2d.to_torch: with padding_mode='zeros' the truncated exponential is not a convolution (each "
                "power of the zero-padded convolution is truncated at the border), so no nn.Conv2d computes it; "
                "keep the layer (it runs with standard convolutions and exports to ONNX as it is) or use "
                "padding_mode='circular'")
        if input_shape is None:
            raise InputShapeRequiredError(
                "SOCConv2d.to_torch: torch's circular padding limits the composed kernel to large enough inputs "
                "(smaller ones need it folded); pass input_shape=(C, H, W)")
        h, w = _input_hw(self, input_shape, self.in_channels)
        k, terms, _ = self._eval_cache()
        kh, kw = (1 + terms * (k.shape[-2] - 1), 1 + terms * (k.shape[-1] - 1))
        from .cayley import _impulse_kernel  # the impulse response of a Fourier-domain map as a conv kernel

        if kh // 2 > h or kw // 2 > w:
            grid = (h, w)
            sym, padding = self.eval_symbol(grid), "same"
        else:
            grid = (kh, kw)
            with torch.no_grad():
                sym, padding = exp_series_matrices(fft_symbol(k.to(torch.float64), grid), terms), (kh // 2, kw // 2)
        kernel = _impulse_kernel(sym, grid, grid, True)[: self.out_channels, : self.in_channels]
        kernel = kernel.to(k.dtype).contiguous()
        conv = nn.Conv2d(self.in_channels, self.out_channels, grid, 1, padding, 1, 1, bias=self.bias is not None,
                         padding_mode="circular", device=kernel.device, dtype=kernel.dtype)
        with torch.no_grad():
            conv.weight.copy_(kernel)
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding_mode={self.padding_mode!r}, train_terms={self.train_terms}, correction={self.correction}, "
                f"bias={self.bias is not None}")
