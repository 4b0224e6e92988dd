"""Operator norms of 2-D convolutions: exact (FFT) values and guaranteed upper bounds.

A convolution is a linear operator on images; its Lipschitz constant is the spectral norm of
that operator, *not* the norm of the reshaped kernel. Notation: ``kernel`` K has shape
(out, in, kh, kw) and acts as ``torch.nn.functional.conv2d`` does (cross-correlation),
``y[i] = Σ_a K[a] x[i·s + a·d − p]``.

**Circular convolution (exact).** On an N_h×N_w torus the operator is block-diagonalized by
the 2-D DFT (Sedghi, Gupta & Long, 2019): its singular values are the union over the
frequencies ω = 2π(j_h/N_h, j_w/N_w) of the singular values of the out×in matrices
``K̂(ω) = Σ_a K[a] e^{−i a·d·ω}`` (:func:`conv_symbol`). A stride-s circular convolution on a
grid divisible by s is the stride-1 circular convolution of the *polyphase* kernel on the
pixel-unshuffled input (:func:`polyphase_kernel`), and pixel unshuffle is a permutation, so
the same holds with the polyphase kernel on the N/s grid.

**Zero (and other) padding (guaranteed bound).** Zero padding embeds x isometrically into
the padded grid of size n + p_left + p_right; the "valid" outputs of the convolution there
never wrap around, so they are a subset of the outputs of the *circular* convolution on any
grid N ≥ n + p_left + p_right: ``conv_zero = R · C_N · E`` with E an isometric embedding and R
a coordinate restriction, hence ``‖conv_zero‖ ≤ ‖C_N‖`` (Delattre et al. 2024 use the same
embedding). Reflect / replicate / circular padding with a non-'same' amount copy some
pixels m times: the padding operator has norm sqrt(max multiplicity) per axis
(:func:`padding_multiplicity`), which multiplies the bound.

**Input-size-independent bound.** ‖C_N‖ ≤ S = sup_ω ‖K̂(ω)‖ for every N. We evaluate
G = max ‖K̂‖₂ on an M_h×M_w grid and correct for the gaps: let ω* attain S with top singular
vectors u, v, and g the nearest grid point, Δ = g − ω*, |Δ_j| ≤ π/M_j. The function
q(t) = |uᴴ K̂(ω* + tΔ) v|² is a real trigonometric sum of exponential type
T = 2ρ, ρ = Σ_j σ_j |Δ_j| (σ_j = d_j(k_j − 1)/2 the half-width of the kernel's exponents after
centring), bounded by S² on ℝ, with its maximum S² at t = 0. Bernstein's inequality
|q''| ≤ T² sup|q| gives G² ≥ q(1) ≥ S²(1 − 2ρ²), hence

    S ≤ G / sqrt(1 − 2ρ²),   ρ = π Σ_j σ_j / M_j                     (valid when 2ρ² < 1).

All computations are in float64 / complex128; final values are multiplied by
``1 + 1e-9`` (the relative rounding error of float64 FFT + SVD here is below 1e-12).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..utils import accepts_renamed_kwargs
# the padding maths and the padded operators live in .padding; importable from here as before
from .padding import (IntPair, Padding, _pair, circular_conv2d, conv2d_operator, padding_multiplicity,
                      resolve_padding, window_multiplicity)

__all__ = [
    "conv_symbol",
    "polyphase_kernel",
    "circular_conv_singular_values",
    "circular_conv_norm",
    "conv_symbol_bound",
    "conv2d_lipschitz_bound",
    "conv2d_operator",
    "conv_operator_power_iteration",
    "resolve_padding",
    "padding_multiplicity",
    "window_multiplicity",
    "grouped_to_dense_kernel",
    "circular_conv2d",
]

_MARGIN = 1.0 + 1e-9


def _check_kernel(kernel: Tensor) -> None:
    if not isinstance(kernel, Tensor):
        raise TypeError(f"kernel must be a torch.Tensor, got {type(kernel).__name__}")
    if kernel.dim() != 4:
        raise ValueError(f"kernel must have shape (out, in, kh, kw), got {tuple(kernel.shape)}")
    if not torch.isfinite(kernel).all():
        raise ValueError("kernel contains non-finite values (NaN or Inf)")


def _spatial(shape: Optional[Sequence[int]]) -> Optional[Tuple[int, int]]:
    """The spatial size (H, W) from an input shape (C, H, W), a spatial size (H, W), or None."""
    if shape is None:
        return None
    s = tuple(int(v) for v in shape)
    if len(s) not in (2, 3):
        raise ValueError(f"input size must be (H, W) or (C, H, W) (no batch), got {tuple(shape)}")
    h, w = s[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"input spatial size must be positive, got {(h, w)}")
    return h, w


def grouped_to_dense_kernel(kernel: Tensor, groups: int) -> Tensor:
    """The dense (out, in, kh, kw) kernel equivalent to a grouped one (out, in/groups, kh, kw).

    The operator of a grouped convolution is block-diagonal over groups; the dense kernel has
    zeros outside the diagonal blocks, so every norm statement for dense kernels applies.
    """
    if groups == 1:
        return kernel
    out, in_g, kh, kw = kernel.shape
    if out % groups:
        raise ValueError(f"out channels {out} not divisible by groups {groups}")
    out_g = out // groups
    dense = kernel.new_zeros(out, in_g * groups, kh, kw)
    for g in range(groups):
        dense[g * out_g:(g + 1) * out_g, g * in_g:(g + 1) * in_g] = kernel[g * out_g:(g + 1) * out_g]
    return dense


def conv_symbol(
    kernel: Tensor,
    grid: Tuple[int, int],
    dilation: IntPair = 1,
    half: bool = False,
) -> Tensor:
    """Transfer matrices ``K̂(ω) = Σ_a K[a] e^{−i a·d·ω}`` on the grid ω = 2π (j_h/M_h, j_w/M_w).

    Args:
        kernel: (out, in, kh, kw), real.
        grid: (M_h, M_w) number of frequencies per axis (for a circular convolution on an
            N_h×N_w image, the grid is (N_h, N_w): the kernel need not fit, it wraps around).
        dilation: kernel dilation d.
        half: keep only j_w ≤ M_w/2 (for a real kernel ``K̂(−ω) = conj K̂(ω)``, so the other
            half has the same singular values).

    Returns:
        complex128 tensor (M_h, M_w or M_w//2+1, out, in).
    """
    _check_kernel(kernel)
    dh, dw = _pair(dilation, "dilation")
    mh, mw = _pair(grid, "grid")
    k = kernel.detach().to(torch.float64)
    kh, kw = k.shape[-2:]
    dev = k.device
    jh = torch.arange(mh, device=dev, dtype=torch.float64)
    jw = torch.arange(mw // 2 + 1 if half else mw, device=dev, dtype=torch.float64)
    ah = torch.arange(kh, device=dev, dtype=torch.float64) * dh
    aw = torch.arange(kw, device=dev, dtype=torch.float64) * dw
    # reduce the phase modulo 2π in integers-first fashion for accuracy
    eh = torch.polar(torch.ones(kh, mh, dtype=torch.float64, device=dev),
                     -2 * math.pi * torch.remainder(ah[:, None] * jh[None, :], mh) / mh)
    ew = torch.polar(torch.ones(kw, len(jw), dtype=torch.float64, device=dev),
                     -2 * math.pi * torch.remainder(aw[:, None] * jw[None, :], mw) / mw)
    return torch.einsum("oiab,ah,bw->hwoi", k.to(torch.complex128), eh, ew)


def polyphase_kernel(kernel: Tensor, stride: IntPair, dilation: IntPair = 1) -> Tensor:
    """Kernel K' with ``conv2d(x, K, stride=s, dilation=d) == conv2d(pixel_unshuffle(x, s), K')``.

    Writing a·d = q·s + r (0 ≤ r < s) per axis, ``x[i·s + a·d] = z_r[i + q]`` with z_r the
    phase-r sub-image, so K'[o, (c, r_h, r_w), q_h, q_w] = K[o, c, a_h, a_w]. The channel order
    (c, r_h, r_w) is that of ``torch.nn.functional.pixel_unshuffle`` when s_h = s_w. Holds for
    "valid" convolutions (apply the padding first) and for circular ones on grids divisible
    by s.

    Returns:
        (out, in·s_h·s_w, ⌊d_h(kh−1)/s_h⌋+1, ⌊d_w(kw−1)/s_w⌋+1), same dtype as ``kernel``.
    """
    _check_kernel(kernel)
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    if sh < 1 or sw < 1 or dh < 1 or dw < 1:
        raise ValueError(f"stride and dilation must be >= 1, got stride={stride}, dilation={dilation}")
    out, cin, kh, kw = kernel.shape
    qh, qw = (dh * (kh - 1)) // sh + 1, (dw * (kw - 1)) // sw + 1
    kp = kernel.new_zeros(out, cin, sh, sw, qh, qw)
    for a in range(kh):
        qa, ra = divmod(a * dh, sh)
        for b in range(kw):
            qb, rb = divmod(b * dw, sw)
            kp[:, :, ra, rb, qa, qb] = kernel[:, :, a, b]
    return kp.reshape(out, cin * sh * sw, qh, qw)


def _smaller_gram(sym: Tensor) -> Tensor:
    return sym.mH @ sym if sym.shape[-2] >= sym.shape[-1] else sym @ sym.mH


def _max_singular_value(sym: Tensor) -> float:
    """Largest singular value of a batch of complex128 matrices, via the Hermitian eigenvalues
    of the smaller Gram matrix (relative error ~1e-13 for the largest value, far below the
    1e-9 margin; much faster than batched complex SVD)."""
    return math.sqrt(max(float(torch.linalg.eigvalsh(_smaller_gram(sym)).max()), 0.0))


def circular_conv_singular_values(
    kernel: Tensor, input_size: Sequence[int], stride: IntPair = 1, dilation: IntPair = 1
) -> Tensor:
    """All singular values of the circular convolution on an H×W image (float64).

    ``input_size`` is the spatial size (H, W) (an input shape (C, H, W) is read as its last two
    entries). The operator maps (in, H, W) → (out, H/s, W/s) (H, W divisible by the stride). Returns a
    1-D tensor of its min(in·H·W, out·(H/s)·(W/s)) singular values (unsorted), computed as
    square roots of the eigenvalues of the smaller per-frequency Gram matrices: absolute
    error ~1e-16·σ_max² in σ², i.e. ~1e-8·σ_max for σ near 0 and ~1e-15 for σ near σ_max.
    """
    h, w = _spatial(input_size)  # type: ignore[misc]
    sh, sw = _pair(stride, "stride")
    if h % sh or w % sw:
        raise ValueError(f"input size {(h, w)} must be divisible by the stride {(sh, sw)}")
    kp = polyphase_kernel(kernel.detach().to(torch.float64), (sh, sw), dilation)
    sym = conv_symbol(kp, (h // sh, w // sw))
    return torch.linalg.eigvalsh(_smaller_gram(sym)).clamp_min(0).sqrt().reshape(-1)


def circular_conv_norm(
    kernel: Tensor, input_size: Sequence[int], stride: IntPair = 1, dilation: IntPair = 1
) -> float:
    """Exact spectral norm of the circular convolution on an H×W image, times ``1 + 1e-9``.

    ``input_size`` is the spatial size (H, W) (an input shape (C, H, W) is read as its last two
    entries). A guaranteed upper bound (and equal to the norm up to that margin). H, W must be
    divisible by the stride.
    """
    h, w = _spatial(input_size)  # type: ignore[misc]
    sh, sw = _pair(stride, "stride")
    if h % sh or w % sw:
        raise ValueError(f"input size {(h, w)} must be divisible by the stride {(sh, sw)}")
    kp = polyphase_kernel(kernel.detach().to(torch.float64), (sh, sw), dilation)
    sym = conv_symbol(kp, (h // sh, w // sw), half=True)
    return _max_singular_value(sym) * _MARGIN


def conv_symbol_bound(kernel: Tensor, stride: IntPair = 1, dilation: IntPair = 1,
                      grid: Optional[int] = None) -> float:
    """Guaranteed bound of sup_ω ‖K̂(ω)‖₂, valid for every input size (module docstring).

    Bounds the zero-padded convolution (any padding amount, any input size) and the circular
    one of stride 1 on any grid. With ``stride`` > 1 the polyphase kernel's symbol is used,
    which bounds zero-padded strided convolutions (not circular ones on grids not divisible
    by the stride). ``grid`` (frequencies per axis) defaults to max(64, 16·k') for a kernel
    of polyphase size k'; the correction factor is 1/sqrt(1 − 2ρ²), about 1.01 for 3×3.
    """
    kp = polyphase_kernel(kernel.detach().to(torch.float64), stride, dilation)
    kh, kw = kp.shape[-2:]
    if kh == 1 and kw == 1:
        return float(torch.linalg.matrix_norm(kp[:, :, 0, 0], ord=2)) * _MARGIN
    m = grid if grid is not None else max(64, 16 * max(kh, kw))
    if m < 1:
        raise ValueError(f"grid must be >= 1, got {grid}")
    rho = math.pi * ((kh - 1) / 2 / m + (kw - 1) / 2 / m)
    if 2 * rho * rho >= 0.5:
        raise ValueError(f"grid {m} too coarse for a kernel of size {(kh, kw)}; use a larger grid")
    sym = conv_symbol(kp, (m, m), half=True)
    g = _max_singular_value(sym)
    return g / math.sqrt(1.0 - 2.0 * rho * rho) * _MARGIN


@accepts_renamed_kwargs({"input_size": "input_shape"})
def conv2d_lipschitz_bound(
    kernel: Tensor,
    input_shape: Optional[Sequence[int]] = None,
    stride: IntPair = 1,
    padding: Padding = 0,
    dilation: IntPair = 1,
    padding_mode: str = "zeros",
    groups: int = 1,
    grid: Optional[int] = None,
) -> float:
    """Guaranteed upper bound of the L2 operator norm of ``conv2d`` as ``nn.Conv2d`` computes it.

    Exact (to 1e-9 relative) for circular padding of 'same' size when ``input_shape`` is given
    and its spatial size is divisible by the stride; otherwise the circular-embedding bound on the
    padded grid (module docstring) times the padding operator's norm; without ``input_shape`` the
    size-independent symbol bound (:func:`conv_symbol_bound`). The bias is irrelevant.

    Args:
        kernel: (out, in/groups, kh, kw).
        input_shape: shape (C, H, W) of one input without the batch dimension (a spatial size
            (H, W) is also accepted), or None for a bound valid at every size.
        stride, padding, dilation, padding_mode, groups: as for ``nn.Conv2d``.
        grid: frequency grid of the size-independent bound.
    """
    _check_kernel(kernel)
    k = grouped_to_dense_kernel(kernel.detach().to(torch.float64), groups)
    ks = tuple(k.shape[-2:])
    s = _pair(stride, "stride")
    d = _pair(dilation, "dilation")
    pads = resolve_padding(padding, ks, d)  # type: ignore[arg-type]
    hw = _spatial(input_shape)
    span = [d[i] * (ks[i] - 1) for i in range(2)]
    same = all(pads[i][0] + pads[i][1] == span[i] for i in range(2))
    if padding_mode == "circular" and same:
        if hw is not None:
            if hw[0] % s[0] == 0 and hw[1] % s[1] == 0:
                return circular_conv_norm(k, hw, s, d)
            # the strided outputs are a subset of the stride-1 circular outputs
            return circular_conv_norm(k, hw, 1, d)
        return conv_symbol_bound(k, 1, d, grid)
    if padding_mode not in ("zeros", "circular", "reflect", "replicate"):
        raise ValueError(f"unknown padding_mode {padding_mode!r}")
    factor = 1.0
    for i in range(2):
        factor *= math.sqrt(padding_multiplicity(hw[i] if hw else None, pads[i][0], pads[i][1], padding_mode))
    if hw is None:
        return factor * conv_symbol_bound(k, s, d, grid) * _MARGIN
    size = []
    for i in range(2):
        n_pad = hw[i] + pads[i][0] + pads[i][1]
        if n_pad < span[i] + 1:
            raise ValueError(f"input size {hw} too small for kernel {ks} with padding {padding}")
        size.append(-(-n_pad // s[i]) * s[i])  # round up to a multiple of the stride
    return factor * circular_conv_norm(k, size, s, d) * _MARGIN


@accepts_renamed_kwargs({"iterations": "n_power_iterations"})
def conv_operator_power_iteration(
    op: Callable[[Tensor], Tensor],
    u: Tensor,
    n_power_iterations: int = 1,
) -> Tuple[Tensor, Tensor]:
    """Power iteration on AᵀA for a linear operator A given as a function (adjoint by autograd).

    Args:
        op: linear map (differentiable in its input).
        u: current input-space vector (1, C, H, W) (persistent state).
        n_power_iterations: number of iterations (each one product with A and one with Aᵀ).

    Returns:
        ``(sigma, u)``: ``sigma = ‖A u‖`` for the returned unit vector u, a **lower bound**
        of ‖A‖₂ (never use it for a certificate); both detached.
    """
    with torch.no_grad():
        u = u / u.norm().clamp_min(torch.finfo(u.dtype).tiny)
    for _ in range(max(1, n_power_iterations)):
        with torch.enable_grad():
            x = u.detach().requires_grad_(True)
            y = op(x)
            (g,) = torch.autograd.grad(y, x, grad_outputs=y.detach())
        with torch.no_grad():
            u = g / g.norm().clamp_min(torch.finfo(g.dtype).tiny)
    with torch.no_grad():
        sigma = op(u).norm()
    return sigma.detach(), u.detach()


