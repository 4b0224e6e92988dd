r"""Orthogonal convolution by layer-wise orthogonal training (LOT) in the Fourier domain."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from ..functional.lot import newton_schulz_polar, newton_schulz_polar_to_tolerance
from ..functional.orthogonalization import default_tolerance
from ..functional.skew import fft_symbol
from ..parametrizations._common import orthogonal_init_
from .cayley import _FourierConv2d
from .soc import Size2, _check_same_conv

__all__ = ["LOTConv2d"]


class LOTConv2d(_FourierConv2d):
    r"""Orthogonal convolution: per frequency W(ω) = V(ω) (V(ω)ᴴV(ω))^(-1/2) by Newton–Schulz.

    V(ω) are the transfer matrices (:func:`~liplayers.functional.skew.fft_symbol`) of the stored
    kernel ``weight`` (out, in, kh, kw) on the H×W grid; W(ω) is their polar factor — unitary
    for in = out, with orthonormal columns (out > in) or rows ((VVᴴ)^(-1/2)V, out < in) — and
    the layer computes y = irfft2(W · rfft2(x)) + b, a circular convolution whose singular
    values are those of the W(ω).

    (VᴴV)^(-1/2) is approximated by Newton–Schulz iterations
    (:mod:`liplayers.functional.lot`: the iterates W_{k+1} = W_k(3I − W_kᴴW_k)/2 from
    W₀ = V/‖V‖_F, the paper's coupled iteration in its equivalent one-sided form), so every
    iterate has singular values in [0, 1] and converges to the polar factor:

    * training: ``n_iterations`` steps (10 as in the paper), differentiable;
    * eval: in complex128, steps until every frequency has ‖WᴴW − I‖_F ≤ ``eval_tol``
      (default 1e-10, at most ``eval_max_iterations``; a numerically rank-deficient V(ω) that
      does not get there takes the polar factor of its SVD), rounded to the working precision
      and cached per input size and parameter version: eval costs two FFTs and a batched
      product, like a plain layer.

    Guarantee: :meth:`lipschitz_bound` is the max over the frequencies of the exact (float64)
    norm of the matrices eval applies (not an assumed 1), for the given ``input_shape``.
    ``padding_mode='circular'``: orthogonal to the tolerance (isometry for out ≥ in, co-isometry
    for out < in); ``'zeros'``: the same on the zero-padded (H + kh − 1)×(W + kw − 1) torus,
    cropped, norm ≤ 1. The training map differs from the eval map where 10 steps have not
    converged (ill-conditioned V(ω)); its singular values are ≤ 1 all the same.

    Initialization: the centre tap is a random (semi-)orthogonal matrix and the other taps are
    zero, so V(ω) is the same orthogonal matrix at every frequency (the paper's identity
    initialization, for any channel numbers) and the layer starts as a 1×1 orthogonal
    convolution; zero bias.

    Args:
        in_channels, out_channels, kernel_size, bias, device, dtype: as ``nn.Conv2d``
            (the kernel may be as large as the image: it wraps around).
        stride, dilation, groups: must be 1.
        padding: ``'same'`` (default) or the equivalent int (k − 1)/2 (odd k).
        padding_mode: ``'circular'`` (default, orthogonal) or ``'zeros'``.
        n_iterations: Newton–Schulz steps per training forward (≥ 1, default 10).
        eval_tol: tolerance of the eval iteration on ‖WᴴW − I‖_F (default 1e-10).
        eval_max_iterations: step limit of the eval iteration (default 100).

    Shape:
        - Input: (B, in_channels, H, W)
        - Output: (B, out_channels, H, W)

    No :meth:`to_torch`: the map is a circular convolution with an H×W kernel that depends on
    the input size, not a small-kernel ``nn.Conv2d``.

    Xu, Li & Li, "LOT: Layer-wise Orthogonal Training on Improving l2 Certified Robustness",
    NeurIPS 2022.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Size2, stride: Size2 = 1,
                 padding: Union[str, Size2] = "same", dilation: Size2 = 1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "circular", device=None, dtype=None, *, n_iterations: int = 10,
                 eval_tol: Optional[float] = None, eval_max_iterations: int = 100) -> None:
        super().__init__()
        ks = _check_same_conv("LOTConv2d", in_channels, out_channels, kernel_size, stride, padding, dilation,
                              groups, padding_mode)
        if isinstance(n_iterations, bool) or not isinstance(n_iterations, int) or n_iterations < 1:
            raise ValueError(f"LOTConv2d: n_iterations must be a positive integer, got {n_iterations!r}")
        if eval_tol is None:
            eval_tol = default_tolerance(torch.float64)
        if not isinstance(eval_tol, (int, float)) or isinstance(eval_tol, bool) or not 0 < eval_tol < 1:
            raise ValueError(f"LOTConv2d: eval_tol must be a number in (0, 1), got {eval_tol!r}")
        if (isinstance(eval_max_iterations, bool) or not isinstance(eval_max_iterations, int)
                or eval_max_iterations < 0):
            raise ValueError(f"LOTConv2d: eval_max_iterations must be an integer >= 0, got {eval_max_iterations!r}")
        self._init_common(in_channels, out_channels, ks, padding, padding_mode)
        self.n_iterations = n_iterations
        self.eval_tol = float(eval_tol)
        self.eval_max_iterations = eval_max_iterations
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *ks, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Random (semi-)orthogonal centre tap, zero other taps and bias."""
        kh, kw = self.kernel_size
        with torch.no_grad():
            self.weight.zero_()
            orthogonal_init_(self.weight[:, :, (kh - 1) // 2, (kw - 1) // 2])
            if self.bias is not None:
                self.bias.zero_()
        self._cache_key = None

    def _params(self):
        return (self.weight,)

    def _symbol(self, grid, dtype, train: bool):
        v_hat = fft_symbol(self.weight.to(dtype), grid)
        if train:
            return newton_schulz_polar(v_hat, self.n_iterations)
        w, _ = newton_schulz_polar_to_tolerance(v_hat, self.eval_tol, self.eval_max_iterations)
        return w

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_iterations={self.n_iterations}"
