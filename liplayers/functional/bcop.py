"""BCOP kernel construction (Li et al. 2019): orthogonal convolution kernels from projectors.

A strided BCOP layer is a pixel unshuffle by s (a permutation) followed by the stride-1 BCOP
convolution on the coarse grid. It is computed as *one* stride-s convolution on the input grid
(:func:`strided_kernel`): writing a = q·s + r (0 ≤ r < s) per axis, the unshuffled image is
z_{(c, r_h, r_w)}[i] = x_c[i·s + r], so

    Σ_q K_c[o, (c, r), q] z_{(c, r)}[i + q − p] = Σ_a K[o, c, a] x_c[i·s + a − p·s]

with K[o, c, q·s + r] = K_c[o, (c, r), q]: a stride-s convolution with the s·k_c kernel K and the
padding p·s on the input grid. Zero padding of z by p rows is zero padding of x by p·s rows;
circular padding of z by p (H divisible by s) is circular padding of x by p·s rows.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .spectral import spectral_norm_exact

__all__ = ["bcop_kernel", "bcop_structural_bound", "strided_kernel"]

_MARGIN = 1.0 + 1e-9


# ---- BCOP kernel construction ------------------------------------------------------------------
def _shift_add(pk: Tensor, rest: Tensor, dim: int) -> Tensor:
    """Kernel one longer along ``dim``: new[j] = pk[j] + rest[j − 1] (out-of-range terms zero)."""
    shape = list(pk.shape)
    shape[dim] = 1
    z = pk.new_zeros(shape)
    return torch.cat([pk, z], dim) + torch.cat([z, rest], dim)


def bcop_kernel(ortho: Tensor, projectors: Tensor, kernel_size: Tuple[int, int]) -> Tensor:
    """The BCOP kernel (out, in, kh, kw) from an orthonormal matrix and projector bases.

    With H = ``ortho`` (out × in, orthonormal rows if out ≤ in, columns otherwise) and
    Q_t = ``projectors[t]`` (c × r, orthonormal columns, c = max(out, in)), the kernel's symbol
    is ``H · Π_t T̂_t(ω)`` (out ≤ in) or ``Π_t T̂_t(ω) · H`` (out > in), with
    T̂_t(ω) = Q_tQ_tᵀ + (I − Q_tQ_tᵀ)e^{−iω_axis} unitary: the symbol is (semi-)unitary at
    every frequency, so the circular convolution is exactly orthogonal on every grid and the
    zero-padded one has norm ≤ 1. The first kh − 1 projectors make taps along the height,
    the next kw − 1 along the width. Each tap composes the kernel K with the 2-tap kernel
    [P, I − P] (P = QQᵀ): new[j] = (PK or KP)[j] + ((I − P)K or K(I − P))[j − 1], computed as
    two thin matrix products per tap. Differentiable.
    """
    kh, kw = kernel_size
    out, cin = ortho.shape
    n_taps = (kh - 1) + (kw - 1)
    if projectors.shape[0] != n_taps:
        raise ValueError(f"expected {n_taps} projector bases for kernel {kernel_size}, got {projectors.shape[0]}")
    axes = [0] * (kh - 1) + [1] * (kw - 1)
    if out > cin:
        # taps applied after H (P acts on output channels): layout (out, in, h, w), K as (out, in·h·w)
        k = ortho[:, :, None, None]
        for t, axis in enumerate(axes):
            q = projectors[t]
            pk = (q @ (q.mT @ k.reshape(out, -1))).reshape(k.shape)
            k = _shift_add(pk, k - pk, 2 + axis)
        return k.contiguous()
    # taps applied before H (P acts on input channels): layout (out, h, w, in), K as (out·h·w, in)
    k = ortho[:, None, None, :]
    for t, axis in enumerate(axes):
        q = projectors[t]
        pk = ((k.reshape(-1, cin) @ q) @ q.mT).reshape(k.shape)
        k = _shift_add(pk, k - pk, 1 + axis)
    return k.permute(0, 3, 1, 2).contiguous()  # conv2d is ~20% slower on a permuted layout


def strided_kernel(coarse: Tensor, stride: int) -> Tensor:
    """The stride-s kernel on the input grid equivalent to pixel unshuffle by s + ``coarse``.

    ``coarse`` (out, in·s², q_h, q_w), input channels in ``pixel_unshuffle`` order (c, r_h, r_w),
    becomes K (out, in, s·q_h, s·q_w) with K[o, c, q_h·s + r_h, q_w·s + r_w] =
    coarse[o, (c, r_h, r_w), q_h, q_w] (module docstring): ``conv2d(pixel_unshuffle(x, s),
    coarse, padding=p) == conv2d(x, K, stride=s, padding=p·s)``. The inverse of
    :func:`~liplayers.functional.conv.polyphase_kernel` (dilation 1). A rearrangement of the
    entries (no arithmetic), differentiable.
    """
    if stride == 1:
        return coarse
    o, cs, qh, qw = coarse.shape
    if cs % (stride * stride):
        raise ValueError(f"coarse kernel input channels {cs} not divisible by stride² = {stride * stride}")
    i = cs // (stride * stride)
    k = coarse.reshape(o, i, stride, stride, qh, qw).permute(0, 1, 4, 2, 5, 3)
    return k.reshape(o, i, qh * stride, qw * stride)


def bcop_structural_bound(ortho: Tensor, projectors: Tensor, kernel_size: Tuple[int, int],
                           kernel_used: Tensor) -> float:
    """Input-size-independent guaranteed bound of the BCOP convolution actually used.

    In exact arithmetic the kernel K* built from these (float) factors has symbol norm
    ≤ ‖H‖₂ · Π_t max(1, 2‖Q_t‖₂² − 1): each tap's symbol P + (I − P)z (|z| = 1, P = QQᵀ ⪰ 0)
    is normal with eigenvalues λ + (1 − λ)z, |λ + (1 − λ)z| ≤ λ + |1 − λ|. The kernel used
    (``kernel_used``: the coarse kernel, (out, in, kh, kw)) differs from K* by rounding:
    D = K_used − K₆₄ (K₆₄ recomposed in float64, whose own error ~1e-15 is covered by the
    1e-9 margin) adds at most Σ_ab ‖D_ab‖_F (triangle inequality over the taps, valid on
    every grid and for zero padding). For a strided layer pass the polyphase rearrangement of
    the stride-s kernel (an exact permutation of its entries).
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
