"""Riemannian gradient on the Stiefel manifold: the tangent projection of a Euclidean gradient.

For X with orthonormal columns (XᵀX = I, X tall) the tangent space at X is
{Z : XᵀZ + ZᵀX = 0}, and the orthogonal projection of a matrix G onto it (embedded metric) is

    Π_X(G) = G − X·sym(XᵀG),     sym(A) = (A + Aᵀ)/2;

for X with orthonormal rows (XXᵀ = I, X wide) it is Π_X(G) = G − sym(GXᵀ)·X. The removed part
X·sym(XᵀG) is normal to the manifold: a step along it changes the singular values of X only,
which the next retraction (polar factor) undoes. Handing Π_X(G) to the optimizer instead of G
is the Riemannian gradient of retraction-based optimization (Absil, Mahony & Sepulchre,
*Optimization Algorithms on Matrix Manifolds*, 2008); with Adam it is Riemannian Adam without
the transport of the moments (Bécigneul & Ganea, ICLR 2019), so the moments never accumulate
components that the retraction throws away.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = ["stiefel_tangent_projection", "with_tangent_gradient"]


def _sym(a: Tensor) -> Tensor:
    return 0.5 * (a + a.mT)


def stiefel_tangent_projection(x: Tensor, g: Tensor) -> Tensor:
    """Π_X(G): the projection of ``g`` onto the tangent space of the Stiefel manifold at ``x``.

    ``x``: (..., m, n) with orthonormal columns when m ≥ n, else orthonormal rows (the formula
    assumes it; for a matrix near the manifold it is the projection at that matrix). ``g``: the
    same shape. Batched over leading dimensions; real dtypes.
    """
    if x.shape != g.shape or x.dim() < 2:
        raise ValueError(f"expected two tensors of one shape (..., m, n), got {tuple(x.shape)} and {tuple(g.shape)}")
    if x.shape[-2] >= x.shape[-1]:
        return g - x @ _sym(x.mT @ g)
    return g - _sym(g @ x.mT) @ x


class _TangentGradient(Function):
    """Identity forward; backward projects the incoming gradient onto the tangent space at x."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return stiefel_tangent_projection(x.detach(), g)


def with_tangent_gradient(x: Tensor) -> Tensor:
    """``x`` itself in the forward pass; its gradient is projected onto the tangent space of the
    Stiefel manifold at ``x`` (:func:`stiefel_tangent_projection`) on the way back.

    Use it on a parameter kept on the manifold by retraction, where it enters the computation,
    so that the optimizer receives the Riemannian gradient. Empty tensors pass through.
    """
    if x.numel() == 0 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _TangentGradient.apply(x)
