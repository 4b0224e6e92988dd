r"""Almost-orthogonal (AOL) rescaling and the Gram row-sum bounds it rests on.

**Gram of a weight.** For a dense weight P (out, in) the Gram matrix is M = PᵀP (in × in).
For a convolution kernel P (out, in, k₁, …) acting as ``conv2d`` does, the operator's Gram
AᵀA is a convolution over the *input* channels whose kernel is the self-correlation of P:

    M_ij[t] = Σ_o Σ_a P[o, i, a] P[o, j, a + t],      t ∈ {−(k − 1), …, k − 1}^d.

:func:`abs_gram` returns Σ_t |M_ij[t]| (one shift for dense weights), block by block for a
grouped kernel (the dense equivalent is block-diagonal).

**Weighted Schur test.** For a symmetric M and any positive vector q,

    ‖M‖₂ ≤ max_i Σ_j |M_ij| q_j / q_i,

because Q⁻¹MQ (Q = diag q) has the same eigenvalues and its ∞-norm is that maximum; with
T = diag(Σ_j |M_ij| q_j / q_i), QTQ − QMQ is symmetric and diagonally dominant, so T ⪰ M.
For a convolution the row of AᵀA at (i, pixel) on a torus of any size sums the entries of
M_ij[t] that wrap onto each pixel: by the triangle inequality its absolute sum is at most
Σ_j Σ_t |M_ij[t]|, so the same T (constant over pixels) dominates the circular operator's
Gram on every grid. A zero-padded convolution is A = R C_N E (E the zero-padding embedding,
R a restriction of the outputs, C_N circular on a grid N ≥ n + padding), so
AᵀA = Eᵀ C_Nᵀ RᵀR C_N E ⪯ Eᵀ C_Nᵀ C_N E ⪯ EᵀT_N E = T as well; strided outputs are a further
restriction, dilation only spreads the taps, and circular padding of at most the 'same'
amount restricts the outputs of the circular convolution. Pixel-duplicating paddings
(reflect, replicate, larger circular padding) are *not* covered.

**AOL** (Prach & Lampert, ECCV 2022, Theorems 1 and 2). With D = diag(d), d_i =
(Σ_j Σ_t |M_ij[t]|)^(-1/2), D M D ⪯ I, so the rescaled weight PD (dense) or the kernel with
input channel i multiplied by d_i (convolution) is 1-Lipschitz for *any* P: no iteration, no
estimate. Replacing d by anything smaller keeps the guarantee (‖PDE‖ ≤ ‖PD‖ for 0 ≤ E ⪯ I),
which is how zero rows of the sum are handled.

**Guaranteed bound.** :func:`gram_row_sum_bound` evaluates the weighted Schur bound
sqrt(max_i Σ_j |M_ij| q_j / q_i) of ‖A‖₂ in float64 *with* an explicit allowance for the
rounding of that computation, so it is an upper bound of the operator norm of the weight
actually given (any input size), not only of its exact-arithmetic intention.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

__all__ = ["abs_gram", "weighted_row_sums", "aol_scale", "aol_rescale", "scale_input_channels",
           "gram_row_sum_bound"]

_U64 = 2.0 ** -53  # unit roundoff of float64


def _check(weight: Tensor, groups: int) -> None:
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(f"weight must be a matrix (out, in) or a kernel (out, in/groups, k...), "
                         f"got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"weight must be real floating point, got {weight.dtype}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if weight.dim() == 2 and groups != 1:
        raise ValueError(f"a dense weight has no groups, got groups={groups}")
    if weight.shape[0] % groups:
        raise ValueError(f"out channels {weight.shape[0]} are not divisible by groups {groups}")


def abs_gram(weight: Tensor, groups: int = 1) -> Tensor:
    """Σ_t |M_ij[t]| for the input-side Gram M of a dense weight or convolution kernel.

    Args:
        weight: (out, in) matrix, or kernel (out, in/groups, k₁, …, k_d) of any dimension d.
        groups: number of groups of a convolution kernel.

    Returns:
        (groups, n, n) with n = in/groups: the diagonal blocks of the (block-diagonal) matrix
        of absolute Gram sums, in the weight's dtype, differentiable.
    """
    _check(weight, groups)
    out, n = weight.shape[:2]
    spatial = tuple(weight.shape[2:])
    taps = math.prod(spatial)
    k = weight.reshape(groups, out // groups, n * taps)
    m = (k.transpose(1, 2) @ k).reshape(groups, n, taps, n, taps)  # P[:, i, a]ᵀ P[:, j, b]
    if taps == 1:
        return m.reshape(groups, n, n).abs()
    # sum the products of taps a, b with the same shift t = b − a (index b − a + k − 1 per axis)
    a = torch.stack(torch.meshgrid(*[torch.arange(s, device=weight.device) for s in spatial], indexing="ij"), -1)
    a = a.reshape(taps, len(spatial))
    shift = (a[None, :, :] - a[:, None, :]) + torch.tensor(spatial, device=weight.device) - 1  # (taps_a, taps_b, d)
    size = [2 * s - 1 for s in spatial]
    flat = torch.zeros(taps, taps, dtype=torch.long, device=weight.device)
    for ax in range(len(spatial)):
        flat = flat * size[ax] + shift[..., ax]
    m = m.permute(0, 1, 3, 2, 4).reshape(groups, n, n, taps * taps)
    corr = m.new_zeros(groups, n, n, math.prod(size)).index_add(-1, flat.reshape(-1), m)
    return corr.abs().sum(-1)


def weighted_row_sums(gram_blocks: Tensor, log_q: Optional[Tensor] = None) -> Tensor:
    """t_i = Σ_j G_ij q_j / q_i (q = exp(log_q)) for the blocks (g, n, n) of :func:`abs_gram`.

    Returns a vector of g·n entries in input-channel order (group-major). ``log_q`` is None
    (q = 1) or has g·n entries; the ratios are formed as exp(log q_j − log q_i).
    """
    g, n, _ = gram_blocks.shape
    if log_q is None:
        return gram_blocks.sum(-1).reshape(g * n)
    if log_q.numel() != g * n:
        raise ValueError(f"log_q must have {g * n} entries, got {log_q.numel()}")
    lq = log_q.reshape(g, n).to(gram_blocks.dtype)
    return (gram_blocks * torch.exp(lq[:, None, :] - lq[:, :, None])).sum(-1).reshape(g * n)


def _floor(s: Tensor) -> Tensor:
    """Raise tiny sums to a floor (only makes the scale smaller: the guarantee is kept)."""
    fl = torch.finfo(s.dtype)
    return s.clamp_min((s.detach().max() * fl.eps).clamp_min(fl.tiny))


def aol_scale(weight: Tensor, groups: int = 1) -> Tensor:
    """The AOL input-channel scales d_i = (Σ_j Σ_t |M_ij[t]|)^(-1/2), shape (in,). Differentiable."""
    return _floor(weighted_row_sums(abs_gram(weight, groups))).rsqrt()


def scale_input_channels(weight: Tensor, scale: Tensor, groups: int = 1) -> Tensor:
    """``weight`` with input channel i (of its group) multiplied by ``scale[i]`` (group-major)."""
    out, n = weight.shape[:2]
    s = scale.reshape(groups, 1, n).expand(groups, out // groups, n).reshape(out, n)
    return weight * s.reshape(out, n, *([1] * (weight.dim() - 2)))


def aol_rescale(weight: Tensor, groups: int = 1) -> Tensor:
    r"""The AOL weight: P·D (dense) or the kernel with input channels rescaled by D.

    Guarantee: the operator norm of the result is ≤ 1 for every P — as a matrix, and as a
    convolution with zero padding (any amount) or circular padding of at most the 'same'
    amount, any stride and dilation, on every input size (module docstring). Same dtype and
    shape as ``weight``; differentiable.

    Shape:
        weight: (out, in) or (out, in/groups, k₁, …, k_d); output: the same.
    """
    return scale_input_channels(weight, aol_scale(weight, groups), groups)


def _perron_log_vector(blocks: Tensor, iterations: int = 100) -> Tensor:
    """log of an approximate Perron vector of each nonnegative block (power iteration)."""
    q = torch.ones(blocks.shape[:2], dtype=blocks.dtype, device=blocks.device)
    for _ in range(iterations):
        q = (blocks @ q[..., None])[..., 0] + q * 1e-12  # the shift keeps q positive
        q = q / q.amax(-1, keepdim=True).clamp_min(1e-300)
    return torch.log(q.clamp_min(1e-300)).reshape(-1)


def gram_row_sum_bound(weight: Tensor, groups: int = 1, log_q=None,
                       input_scale: Optional[Tensor] = None) -> float:
    r"""Guaranteed upper bound of ‖A‖₂ by the weighted Schur test on its Gram (module docstring).

    A is the dense map or the convolution (zero padding of any amount, circular padding of at
    most the 'same' amount, any stride, dilation and input size) of ``weight`` with its input
    channels multiplied by ``input_scale`` (if given). Computed in float64; every Gram entry
    carries the rounding allowance γ_m Σ|P||P| (m = products per entry, γ_m = m·u/(1 − m·u),
    u = 2⁻⁵³; the sums Σ_t |P[o,i,·]||P[o,j,·+t]| over all shifts equal S_oi S_oj with
    S_oi = Σ_a |P[o, i, a]|), and the final sum and square root a further relative γ, so the
    value bounds the norm of the operator of the given floating-point weight. Any positive
    q gives a valid bound (non-finite ratios fall back to q = 1); ``log_q="perron"`` takes q
    from power iteration on the absolute Gram, which approaches its Perron root (the smallest
    bound of this form, Collatz–Wielandt) — e.g. ≤ 1 (+ rounding) for an AOL-rescaled weight.

    Args:
        weight: (out, in) or (out, in/groups, k₁, …, k_d).
        groups: groups of the convolution.
        log_q: None (q = 1), a tensor of log-weights (in entries), or ``"perron"``.
        input_scale: optional positive scales of the input channels (in entries).

    Returns:
        float: sqrt(max_i Σ_j (|M_ij| + err_ij) q_j / q_i) · (1 + γ).
    """
    _check(weight, groups)
    with torch.no_grad():
        w = weight.detach().to(torch.float64)
        if input_scale is not None:
            w = scale_input_channels(w, input_scale.detach().to(torch.float64), groups)
        if not bool(torch.isfinite(w).all()):
            raise ValueError("weight contains non-finite values (NaN or Inf)")
        out, n = w.shape[:2]
        taps = math.prod(w.shape[2:])
        g = abs_gram(w, groups)
        s = w.abs().reshape(groups, out // groups, n, taps).sum(-1)  # S_oi per group
        err = s.transpose(1, 2) @ s  # Σ_t (|P| ⋆ |P|)_ij[t] = Σ_o S_oi S_oj
        m = out // groups + taps + 4  # products and shift additions per entry, scaling, abs
        gam = m * _U64 / (1 - m * _U64)
        blocks = g + gam * err
        rows, ratio_err = None, 0.0
        if isinstance(log_q, str):
            if log_q != "perron":
                raise ValueError(f"log_q must be a tensor, None or 'perron', got {log_q!r}")
            log_q = _perron_log_vector(g)
        if log_q is not None:
            lq = log_q.detach().to(torch.float64)
            if bool(torch.isfinite(lq).all()):
                rows = weighted_row_sums(blocks, lq)
                # exp(lq_j − lq_i) is q_j/q_i to a relative (2 max|lq| + 2)·u
                ratio_err = 4.0 * float(lq.abs().max()) + 4.0
                if not bool(torch.isfinite(rows).all()):
                    rows, ratio_err = None, 0.0
        if rows is None:
            rows = weighted_row_sums(blocks)
        # summed terms per row (≥ n·∏(2k − 1)), the ratios, the square root
        length = n * (2 ** w.dim()) * max(taps, 1) + ratio_err + 8
        gam_sum = length * _U64 / (1 - length * _U64)
        return math.sqrt(max(float(rows.max()), 0.0)) * (1.0 + gam_sum)
