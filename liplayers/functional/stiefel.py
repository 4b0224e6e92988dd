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

__all__ = ["stiefel_tangent_projection", "with_tangent_gradient", "scaled_linear"]


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


class _RiemannianLinear(Function):
    """y = s·(x Vᵀ) + b, with the Riemannian gradient of V computed from the batch.

    With z = x Vᵀ (kept from the forward), g the output gradient and G = s·gᵀx the Euclidean
    gradient of V, the tangent projection is, for orthonormal rows (out ≤ in),
    Π(G) = G − sym(GVᵀ)V = s·[gᵀ(x − ½ zV) − ½ zᵀ(gV)], and for orthonormal columns
    Π(G) = G − V sym(VᵀG) = s·[(g − ½ (gV)Vᵀ)ᵀx − ½ zᵀ(gV)]; gV is also the input gradient
    (÷ s). Extra cost over the Euclidean backward: two products of B·out·in multiply-adds,
    instead of two of min(out, in)·out·in for the projection of the formed G.
    """

    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, s: float, bias):  # type: ignore[override]
        z = x @ v.mT
        out = z * s if bias is None else torch.addcmul(bias, z, torch.tensor(s, dtype=z.dtype, device=z.device))
        ctx.save_for_backward(x, v, z)
        ctx.s, ctx.has_bias = s, bias is not None
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, v, z = ctx.saved_tensors
        s = ctx.s
        gv = g @ v
        gx = gv * s if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1]:
            if v.shape[0] <= v.shape[1]:  # orthonormal rows
                gw = (g.mT @ (x - 0.5 * (z @ v))).sub_(z.mT @ gv, alpha=0.5).mul_(s)
            else:  # orthonormal columns
                gw = ((g - 0.5 * (gv @ v.mT)).mT @ x).sub_(z.mT @ gv, alpha=0.5).mul_(s)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g.sum(0)
        return gx, gw, None, gb


def scaled_linear(x: Tensor, v: Tensor, s: float = 1.0, bias=None, riemannian: bool = True) -> Tensor:
    """s·(x Vᵀ) + b without a scaled copy of V kept for backward (autograd keeps x and V).

    x (..., in), V (out, in), bias (out,) or None. With ``riemannian`` (V with orthonormal rows
    or columns) the gradient with respect to V is the tangent projection at V
    (:func:`stiefel_tangent_projection`) of the Euclidean one, computed from the batch when that
    is cheaper (B < min(out, in), B the number of rows of x): two products of B·out·in instead of
    two of min(out, in)·out·in. The gradients of x and b are the usual ones either way.
    """
    x2 = x.reshape(-1, x.shape[-1])
    if riemannian and x2.shape[0] < min(v.shape) and torch.is_grad_enabled() and v.requires_grad:
        out = _RiemannianLinear.apply(x2, v, float(s), bias)
    else:
        w = with_tangent_gradient(v) if riemannian else v
        out = torch.addmm(bias, x2, w.mT, alpha=s) if bias is not None else torch.mm(x2, w.mT).mul_(s)
    return out.reshape(*x.shape[:-1], v.shape[0])
