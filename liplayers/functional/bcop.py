"""BCOP kernel construction (Li et al. 2019): orthogonal convolution kernels from projectors."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .spectral import spectral_norm_exact

__all__ = ["bcop_kernel", "bcop_structural_bound"]

_MARGIN = 1.0 + 1e-9


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


def bcop_structural_bound(ortho: Tensor, projectors: Tensor, kernel_size: Tuple[int, int],
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

