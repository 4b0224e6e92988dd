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

The *canonical* metric of the Stiefel manifold, ⟨Δ, Δ⟩_X = tr Δᵀ(I − ½XXᵀ)Δ (Edelman, Arias &
Smith, 1998), gives the Riemannian gradient

    grad_c = G − X·Gᵀ·X

for either orientation (tall X: Xᵀ·grad_c = XᵀG − GᵀX is skew, so grad_c is tangent). It keeps
the part of G outside the span of X as the projection does and doubles the in-span skew part
(for square orthogonal X, grad_c = 2·Π_X(G)); it is the gradient of the Cayley-transform
optimizers of Wen & Yin (2013) and Li, Li & Todorovic (ICLR 2020). For a linear layer it costs
one product fewer than the projection when computed from the batch (:func:`scaled_linear`).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

__all__ = ["stiefel_tangent_projection", "stiefel_canonical_gradient", "riemannian_gradient",
           "with_tangent_gradient", "scaled_linear"]

METRICS = ("embedded", "canonical")


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


def stiefel_canonical_gradient(x: Tensor, g: Tensor) -> Tensor:
    """G − X·Gᵀ·X: the Riemannian gradient of the canonical metric at ``x`` of the Euclidean
    gradient ``g`` (see the module docstring).

    ``x``: (..., m, n) with orthonormal columns (m ≥ n) or rows (m < n); one formula for both
    (for a matrix near the manifold it is the formula at that matrix). ``g``: the same shape.
    Batched over leading dimensions; real dtypes. Tangent at X on the manifold; equals
    2·:func:`stiefel_tangent_projection` for square orthogonal X.
    """
    if x.shape != g.shape or x.dim() < 2:
        raise ValueError(f"expected two tensors of one shape (..., m, n), got {tuple(x.shape)} and {tuple(g.shape)}")
    if x.shape[-2] >= x.shape[-1]:
        return g - x @ (g.mT @ x)
    return g - (x @ g.mT) @ x


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return metric


def riemannian_gradient(x: Tensor, g: Tensor, metric: str = "embedded") -> Tensor:
    """The Riemannian gradient at ``x`` of ``g`` for ``metric``: :func:`stiefel_tangent_projection`
    (``"embedded"``) or :func:`stiefel_canonical_gradient` (``"canonical"``)."""
    if _check_metric(metric) == "canonical":
        return stiefel_canonical_gradient(x, g)
    return stiefel_tangent_projection(x, g)


class _TangentGradient(Function):
    """Identity forward; backward maps the incoming gradient to the Riemannian gradient at x."""

    @staticmethod
    def forward(ctx, x: Tensor, metric: str) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.metric = metric
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return riemannian_gradient(x.detach(), g, ctx.metric), None


def with_tangent_gradient(x: Tensor, metric: str = "embedded") -> Tensor:
    """``x`` itself in the forward pass; on the way back its gradient becomes the Riemannian
    gradient at ``x``: the projection onto the tangent space of the Stiefel manifold
    (:func:`stiefel_tangent_projection`, ``metric="embedded"``, default) or the gradient of the
    canonical metric (:func:`stiefel_canonical_gradient`, ``metric="canonical"``).

    Use it on a parameter kept on the manifold by retraction, where it enters the computation,
    so that the optimizer receives the Riemannian gradient. Empty tensors pass through.
    """
    _check_metric(metric)
    if x.numel() == 0 or not (torch.is_grad_enabled() and x.requires_grad):
        return x
    return _TangentGradient.apply(x, metric)


class _RiemannianLinear(Function):
    """y = s·(x Vᵀ) + b, with the Riemannian gradient of V computed from the batch.

    With z = x Vᵀ (kept from the forward), g the output gradient and G = s·gᵀx the Euclidean
    gradient of V (gV is also the input gradient ÷ s):

    * canonical metric, either orientation: G − V Gᵀ V = s·[gᵀx − zᵀ(gV)] — one product of
      B·out·in multiply-adds more than the Euclidean backward (two when the input needs no
      gradient, as gV is then computed for it alone);
    * embedded metric (projection), orthonormal rows (out ≤ in): G − sym(GVᵀ)V =
      s·[gᵀ(x − ½ zV) − ½ zᵀ(gV)]; orthonormal columns: G − V sym(VᵀG) =
      s·[(g − ½ (gV)Vᵀ)ᵀx − ½ zᵀ(gV)] — two products more (three without input gradient).

    The projection of the formed G costs two products of min(out, in)·out·in instead.
    """

    @staticmethod
    def forward(ctx, x: Tensor, v: Tensor, s: float, bias, metric: str):  # type: ignore[override]
        z = x @ v.mT
        out = z * s if bias is None else torch.addcmul(bias, z, torch.tensor(s, dtype=z.dtype, device=z.device))
        ctx.save_for_backward(x, v, z)
        ctx.s, ctx.has_bias, ctx.metric = s, bias is not None, metric
        return out

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        x, v, z = ctx.saved_tensors
        s = ctx.s
        gv = g @ v
        gx = gv * s if ctx.needs_input_grad[0] else None
        gw = gb = None
        if ctx.needs_input_grad[1]:
            if ctx.metric == "canonical":
                gw = torch.mm(g.mT, x).addmm_(z.mT, gv, alpha=-1.0)
            elif v.shape[0] <= v.shape[1]:  # orthonormal rows
                gw = (g.mT @ (x - 0.5 * (z @ v))).sub_(z.mT @ gv, alpha=0.5)
            else:  # orthonormal columns
                gw = ((g - 0.5 * (gv @ v.mT)).mT @ x).sub_(z.mT @ gv, alpha=0.5)
            if s != 1.0:
                gw.mul_(s)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g.sum(0)
        return gx, gw, None, gb, None


def scaled_linear(x: Tensor, v: Tensor, s: float = 1.0, bias=None, riemannian: bool = True,
                  metric: str = "canonical") -> Tensor:
    """s·(x Vᵀ) + b without a scaled copy of V kept for backward (autograd keeps x and V).

    x (..., in), V (out, in), bias (out,) or None. With ``riemannian`` (V with orthonormal rows
    or columns) the gradient with respect to V is the Riemannian gradient at V of the Euclidean
    one for ``metric`` (:func:`riemannian_gradient`: ``"canonical"``, default, G − V Gᵀ V, or
    ``"embedded"``, the tangent projection), computed from the batch when that is cheaper
    (:class:`_RiemannianLinear`: k products of B·out·in, k = 1 canonical / 2 embedded, one more
    when x needs no gradient, against two of min(out, in)·out·in for the formed G). The
    gradients of x and b are the usual ones either way.
    """
    _check_metric(metric)
    x2 = x.reshape(-1, x.shape[-1])
    if riemannian and torch.is_grad_enabled() and v.requires_grad:
        extra = (1 if metric == "canonical" else 2) + (0 if x.requires_grad else 1)
        batch_form = x2.shape[0] * extra < 2 * min(v.shape)
    else:
        batch_form = False
    if batch_form:
        out = _RiemannianLinear.apply(x2, v, float(s), bias, metric)
    else:
        w = with_tangent_gradient(v, metric) if riemannian else v
        out = torch.addmm(bias, x2, w.mT, alpha=s) if bias is not None else torch.mm(x2, w.mT).mul_(s)
    return out.reshape(*x.shape[:-1], v.shape[0])
